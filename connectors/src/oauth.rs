//! OAuth 2.0 authorisation-code flows, the same for every provider but for the details each
//! one sets in its [`OAuthClient`]: the pages' URLs, the scopes (read-only), whether it takes
//! PKCE, and how its token endpoint wants its body.
//!
//! Token endpoints are read by hand rather than through the `oauth2` crate, which misreads
//! GitHub's refusals: GitHub answers them with HTTP 200 and an `error` field.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{
    Credentials, Provider, ProviderError, error::detail, http::Answer, http::Http,
    settings::ClientSecret,
};

/// A PKCE pair (RFC 7636): the verifier stays with us, its S256 challenge goes to the
/// authorisation page.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkce {
    pub verifier: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        Pkce {
            verifier: random_token(),
        }
    }

    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Pkce::new()
    }
}

/// 32 random bytes, base64url: an OAuth `state` or a PKCE verifier (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How a token endpoint wants its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenBody {
    Form,
    Json,
}

/// This fleet's OAuth client at one provider's authorisation server.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub(crate) provider: Provider,
    pub(crate) client_id: String,
    pub(crate) client_secret: ClientSecret,
    /// The consent page.
    pub(crate) authorize_url: String,
    pub(crate) token_url: String,
    pub(crate) scopes: &'static str,
    pub(crate) pkce: bool,
    pub(crate) token_body: TokenBody,
    /// Parameters the consent page needs besides the standard ones.
    pub(crate) extra: &'static [(&'static str, &'static str)],
}

/// Which grant a token request made: refusals mean different things for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrantType {
    Code,
    Refresh,
}

/// A token endpoint's answer (no `Debug`: it holds tokens).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    error: Option<String>,
    error_description: Option<String>,
}

impl OAuthClient {
    /// The consent page for this client, carrying `state` and, where the provider takes it,
    /// the PKCE challenge.
    pub(crate) fn consent_url(&self, state: &str, pkce: &Pkce, redirect_uri: &str) -> String {
        let mut url = url::Url::parse(&self.authorize_url).unwrap_or_else(|_| {
            url::Url::parse("http://invalid-authorize-url.invalid/").expect("a valid URL")
        });
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("response_type", "code")
                .append_pair("scope", self.scopes)
                .append_pair("state", state);
            if self.pkce {
                query
                    .append_pair("code_challenge", &pkce.challenge())
                    .append_pair("code_challenge_method", "S256");
            }
            for (name, value) in self.extra {
                query.append_pair(name, value);
            }
        }
        url.into()
    }

    pub(crate) async fn exchange(
        &self,
        http: &Http,
        code: &str,
        pkce: &Pkce,
        redirect_uri: &str,
    ) -> Result<Credentials, ProviderError> {
        let mut params = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        if self.pkce {
            params.push(("code_verifier", &pkce.verifier));
        }
        let answer = self.token_request(http, &params).await?;
        read_token_answer(&answer, GrantType::Code, None, Utc::now())
    }

    pub(crate) async fn refresh(
        &self,
        http: &Http,
        credentials: &Credentials,
    ) -> Result<Credentials, ProviderError> {
        let Some(refresh_token) = &credentials.refresh_token else {
            return Err(ProviderError::RefreshRefused {
                provider: self.provider,
                detail: "no refresh token was granted".into(),
            });
        };
        let params = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
        ];
        let answer = self.token_request(http, &params).await?;
        read_token_answer(&answer, GrantType::Refresh, Some(credentials), Utc::now())
    }

    async fn token_request(
        &self,
        http: &Http,
        params: &[(&str, &str)],
    ) -> Result<Answer, ProviderError> {
        let mut all: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret.0),
        ];
        all.extend_from_slice(params);
        let request = http
            .client()
            .post(&self.token_url)
            .header(reqwest::header::ACCEPT, "application/json");
        let request = match self.token_body {
            TokenBody::Form => request.form(&all),
            TokenBody::Json => request.json(
                &all.iter()
                    .map(|(k, v)| (*k, *v))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            ),
        };
        // Once: a retry would spend a code or a rotated refresh token a second time.
        http.send_once(self.provider, None, request).await
    }
}

/// Credentials from a token endpoint's answer. A refresh that returns no new refresh token
/// keeps `previous`'s (Google's way); one that returns a new one replaces it (Atlassian
/// rotates them, and the old one stops working at once).
fn read_token_answer(
    answer: &Answer,
    grant: GrantType,
    previous: Option<&Credentials>,
    now: DateTime<Utc>,
) -> Result<Credentials, ProviderError> {
    let provider = answer.provider;
    let token: Option<TokenAnswer> = answer.decode().ok();
    // Only a refused grant means the person must connect again; a refused client is this
    // fleet's OAuth settings, and anything else a refusal of this one request.
    let refused = |error: &str, detail: String| match (grant, error) {
        (_, "invalid_client" | "incorrect_client_credentials" | "unauthorized_client") => {
            ProviderError::NotConfigured { provider, detail }
        }
        (GrantType::Refresh, "invalid_grant" | "bad_refresh_token") => {
            ProviderError::RefreshRefused { provider, detail }
        }
        _ => ProviderError::Rejected {
            provider,
            status: answer.status.as_u16(),
            detail,
        },
    };
    // GitHub refuses with 200 and an `error` field; the others with a 4xx.
    if let Some(TokenAnswer {
        error: Some(error),
        error_description,
        ..
    }) = &token
    {
        let description = error_description.as_deref().unwrap_or("");
        return Err(refused(error, detail(&format!("{error}: {description}"))));
    }
    if !answer.status.is_success() {
        return Err(refused("", answer.message()));
    }
    let Some(TokenAnswer {
        access_token: Some(access_token),
        refresh_token,
        expires_in,
        ..
    }) = token
    else {
        return Err(ProviderError::Unreadable {
            provider,
            detail: "the token answer has no access_token".into(),
        });
    };
    Ok(Credentials {
        access_token,
        refresh_token: refresh_token.or_else(|| previous.and_then(|p| p.refresh_token.clone())),
        expires_at: expires_in.map(|seconds| now + chrono::Duration::seconds(seconds)),
        basic_user: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::{StatusCode, header::HeaderMap};

    fn answer(provider: Provider, status: u16, body: &str) -> Answer {
        Answer {
            provider,
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-12-02T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn githubs_refusal_comes_with_a_200() {
        let refused = answer(
            Provider::Github,
            200,
            r#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired.","error_uri":"https://docs.github.com/"}"#,
        );
        let err = read_token_answer(&refused, GrantType::Code, None, now()).unwrap_err();
        assert!(
            matches!(&err, ProviderError::Rejected { detail, .. } if detail.contains("bad_verification_code")),
            "{err:?}"
        );
        let bad_refresh = answer(
            Provider::Github,
            200,
            r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired."}"#,
        );
        assert!(matches!(
            read_token_answer(&bad_refresh, GrantType::Refresh, None, now()),
            Err(ProviderError::RefreshRefused { .. })
        ));
    }

    #[test]
    fn atlassian_rotates_the_refresh_token_and_google_keeps_it() {
        let previous = Credentials {
            access_token: "old".into(),
            refresh_token: Some("r1".into()),
            expires_at: None,
            basic_user: None,
        };
        let rotated = answer(
            Provider::Jira,
            200,
            r#"{"access_token":"a2","expires_in":3600,"token_type":"Bearer","refresh_token":"r2","scope":"read:jira-work offline_access"}"#,
        );
        let fresh =
            read_token_answer(&rotated, GrantType::Refresh, Some(&previous), now()).unwrap();
        assert_eq!(fresh.refresh_token.as_deref(), Some("r2"));
        assert_eq!(fresh.expires_at, Some(now() + chrono::Duration::hours(1)));
        let google = answer(
            Provider::Gmail,
            200,
            r#"{"access_token":"ya29.a","expires_in":3599,"scope":"https://www.googleapis.com/auth/gmail.readonly","token_type":"Bearer"}"#,
        );
        let fresh = read_token_answer(&google, GrantType::Refresh, Some(&previous), now()).unwrap();
        assert_eq!(fresh.access_token, "ya29.a");
        assert_eq!(fresh.refresh_token.as_deref(), Some("r1"));
    }

    #[test]
    fn a_refused_client_is_the_fleets_settings_not_the_persons_grant() {
        let google = answer(
            Provider::Gmail,
            401,
            r#"{"error":"invalid_client","error_description":"The OAuth client was not found."}"#,
        );
        let err = read_token_answer(&google, GrantType::Refresh, None, now()).unwrap_err();
        assert!(
            matches!(err, ProviderError::NotConfigured { .. }),
            "{err:?}"
        );
        let unknown = answer(Provider::Jira, 400, r#"{"error":"invalid_request"}"#);
        let err = read_token_answer(&unknown, GrantType::Refresh, None, now()).unwrap_err();
        assert!(matches!(err, ProviderError::Rejected { .. }), "{err:?}");
    }

    #[test]
    fn invalid_grant_refuses_the_refresh() {
        let atlassian = answer(
            Provider::Confluence,
            403,
            r#"{"error":"invalid_grant","error_description":"Unknown or invalid refresh token."}"#,
        );
        let google = answer(
            Provider::Gdrive,
            400,
            r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
        );
        for refused in [atlassian, google] {
            let err = read_token_answer(&refused, GrantType::Refresh, None, now()).unwrap_err();
            assert!(
                matches!(&err, ProviderError::RefreshRefused { detail, .. } if detail.starts_with("invalid_grant")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn the_consent_url_carries_state_scopes_and_the_pkce_challenge() {
        let client = OAuthClient {
            provider: Provider::Gmail,
            client_id: "cid".into(),
            client_secret: ClientSecret("secret".into()),
            authorize_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
            token_url: "https://oauth2.googleapis.com/token".into(),
            scopes: "a b",
            pkce: true,
            token_body: TokenBody::Form,
            extra: &[("access_type", "offline")],
        };
        let pkce = Pkce::new();
        let url = url::Url::parse(&client.consent_url("st", &pkce, "http://x/cb")).unwrap();
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["state"], "st");
        assert_eq!(query["scope"], "a b");
        assert_eq!(query["redirect_uri"], "http://x/cb");
        assert_eq!(query["code_challenge"], pkce.challenge());
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["access_type"], "offline");
        assert!(!url.as_str().contains("secret"));
        // RFC 7636, appendix B.
        let rfc = Pkce {
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
        };
        assert_eq!(
            rfc.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
