//! What Gmail and Google Drive share: one Google OAuth client (with PKCE and offline access,
//! so a refresh token comes back) and Google's calls with a bearer token.

use crate::{
    Account, Provider, ProviderError, ProviderSettings,
    http::{Answer, Http},
    join,
    oauth::{OAuthClient, TokenBody},
};

/// Google's OAuth client for `provider`, asking that product's read-only scope.
pub(crate) fn oauth_client(settings: &ProviderSettings, provider: Provider) -> Option<OAuthClient> {
    let (client_id, client_secret) = settings.client(provider)?;
    let scopes = match provider {
        Provider::Gmail => "https://www.googleapis.com/auth/gmail.readonly",
        _ => "https://www.googleapis.com/auth/drive.metadata.readonly",
    };
    Some(OAuthClient {
        provider,
        client_id,
        client_secret,
        authorize_url: join(&settings.google_auth_url, "/o/oauth2/v2/auth"),
        token_url: settings.google_token_url.clone(),
        scopes,
        pkce: true,
        token_body: TokenBody::Form,
        // A refresh token comes back only with offline access and a fresh consent.
        extra: &[("access_type", "offline"), ("prompt", "consent")],
    })
}

/// `GET {api}{path}` with `query`, as `account`.
pub(crate) async fn get(
    http: &Http,
    provider: Provider,
    api: &str,
    account: &Account,
    path: &str,
    query: &[(&str, &str)],
) -> Result<Answer, ProviderError> {
    let request = account
        .credentials
        .authorize(http.client().get(join(api, path)).query(query))
        .header("Accept", "application/json");
    http.send(provider, Some(account.connector_id), request)
        .await
}
