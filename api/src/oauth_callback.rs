//! `GET /v1/oauth/callback/{provider}`: where a provider sends the person back after they
//! granted (or refused) access. No API key: the single-use `state` made with the consent
//! page authenticates the request. The code is traded for tokens, the site the grant
//! reaches is found (Atlassian), and the connector is marked `connected` with its first
//! ingest enqueued in one transaction. Whatever fails, the answer is a small page a browser
//! can show, and the connector keeps its status with the reason noted.

use poem::web::Data;
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Path, Query},
    payload::Html,
};
use taskfleet_connectors::{Account, Grant, Pkce, Provider};
use taskfleet_storage::{Scope, connectors::oauth_state_context};

use crate::{
    connectors::{redirect_uri, seal},
    observe::RequestId,
    state::AppState,
};

#[derive(ApiResponse)]
pub enum CallbackPage {
    /// Connected; the first ingest is on its way.
    #[oai(status = 200)]
    Connected(Html<String>),
    /// A replayed, expired or foreign `state`, a missing code, or access refused by the
    /// person: nothing changed.
    #[oai(status = 400)]
    Refused(Html<String>),
    /// The provider refused to trade the code, or could not be reached.
    #[oai(status = 502)]
    ProviderFailed(Html<String>),
}

pub struct OAuthCallbackApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Connectors")]
impl OAuthCallbackApi {
    /// OAuth callback (the provider sends the person here)
    ///
    /// Needs no API key: the single-use `state` authenticates it. Trades the code for tokens,
    /// stores them sealed, marks the connector `connected` and enqueues its first ingest in
    /// the same transaction. Answers a page a browser can show.
    #[allow(clippy::too_many_arguments)]
    #[oai(
        path = "/oauth/callback/:provider",
        method = "get",
        operation_id = "oauthCallback"
    )]
    async fn callback(
        &self,
        state: Data<&AppState>,
        request_id: Data<&RequestId>,
        /// The provider's name (`github`, `jira`, `confluence`, `gmail`, `gdrive`): text
        /// rather than an enum, so that any other name is answered with a page too.
        provider: Path<String>,
        code: Query<Option<String>>,
        #[oai(name = "state")] oauth_state: Query<Option<String>>,
        error: Query<Option<String>>,
        error_description: Query<Option<String>>,
    ) -> CallbackPage {
        let Some(provider) = Provider::ALL.into_iter().find(|p| p.name() == provider.0) else {
            return CallbackPage::Refused(page(
                "This link does not work",
                "It names no provider taskfleet connects to. Start connecting again from taskfleet.",
            ));
        };
        let taken = match &oauth_state.0 {
            Some(s) => state.connectors.take_oauth_state(&provider.name(), s).await,
            None => Ok(None),
        };
        let pending = match taken {
            Ok(Some(pending)) => pending,
            Ok(None) => {
                return CallbackPage::Refused(page(
                    "This link does not work",
                    "It was used already, expired after 10 minutes, or was not made by taskfleet \
                     for this provider. Start connecting again from taskfleet.",
                ));
            }
            Err(err) => {
                tracing::warn!(%err, "OAuth callback could not read its state");
                return CallbackPage::ProviderFailed(page(
                    "taskfleet is unavailable",
                    "Its database did not answer. Start connecting again in a moment.",
                ));
            }
        };
        let connectors = &state.connectors;
        let id = pending.connector_id;
        let fail = |message: String| async move {
            if let Err(err) = connectors
                .note_connect_failure(pending.tenant_id, id, &message)
                .await
            {
                tracing::warn!(%err, "could not record the connection's failure");
            }
            message
        };
        if let Some(error) = error.0 {
            let why = error_description.0.unwrap_or(error);
            let message = fail(format!("{provider} did not grant access ({why})")).await;
            return CallbackPage::Refused(page("Access was not granted", &message));
        }
        let Some(code) = code.0 else {
            return CallbackPage::Refused(page("No code came back", "Start connecting again."));
        };
        let verifier = state
            .sealer
            .open(&pending.pkce_verifier, &oauth_state_context(id))
            .map(|plain| String::from_utf8_lossy(&plain).into_owned());
        let Ok(verifier) = verifier else {
            return CallbackPage::Refused(page(
                "This link does not work",
                "Its state was sealed under a key this server no longer has. Start connecting again.",
            ));
        };
        let connector = state.providers.get(provider);
        let redirect = redirect_uri(&state, provider);
        let pkce = Pkce { verifier };
        let credentials = match connector.exchange_code(&code, &pkce, &redirect).await {
            Ok(credentials) => credentials,
            Err(err) => {
                let message = fail(err.user_message(Grant::OAuth)).await;
                return CallbackPage::ProviderFailed(page("Connecting failed", &message));
            }
        };
        let record = match connectors.get(Scope::Tenant(pending.tenant_id), id).await {
            Ok(Some(record)) => record,
            _ => {
                return CallbackPage::Refused(page(
                    "This connector is gone",
                    "It was deleted while you were granting access.",
                ));
            }
        };
        let account = Account {
            connector_id: id,
            credentials,
            config: serde_json::from_value(record.config).unwrap_or_default(),
        };
        let config = match connector.discover(&account).await {
            Ok(config) => config,
            Err(err) => {
                let message = fail(err.user_message(Grant::OAuth)).await;
                return CallbackPage::ProviderFailed(page("Connecting failed", &message));
            }
        };
        let sealed = seal(&state, pending.tenant_id, id, &account.credentials);
        let config = serde_json::to_value(config).expect("settings serialise");
        match connectors
            .complete_oauth(
                pending.tenant_id,
                id,
                &sealed,
                &config,
                Some(request_id.0.0.clone()),
            )
            .await
        {
            Ok(Some(_)) => {
                state.wake_dispatcher();
                CallbackPage::Connected(page(
                    &format!("{provider} is connected"),
                    "taskfleet is fetching your items now. You can close this tab.",
                ))
            }
            Ok(None) => CallbackPage::Refused(page(
                "This connector is gone",
                "It was deleted while you were granting access.",
            )),
            Err(err) => {
                tracing::warn!(%err, "OAuth callback could not store the connection");
                CallbackPage::ProviderFailed(page(
                    "taskfleet is unavailable",
                    "Its database did not answer. Start connecting again in a moment.",
                ))
            }
        }
    }
}

/// A small page for a browser: a title and a sentence, escaped.
fn page(title: &str, message: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · taskfleet</title>\
         <style>body{{font:16px system-ui,sans-serif;margin:15vh auto;max-width:34em;padding:0 1em}}</style>\
         </head><body><h1>{title}</h1><p>{message}</p></body></html>",
        title = escape(title),
        message = escape(message)
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_providers_said() {
        let Html(html) = page("Connecting failed", "<script>x</script> & \"q\"");
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt; &amp; &quot;q&quot;"));
    }
}
