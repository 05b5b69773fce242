//! What a call to a provider needs: the account's credentials and the connector's settings.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Refreshed this long before it expires, so that no call starts with a token about to lapse.
const REFRESH_MARGIN: chrono::Duration = chrono::Duration::seconds(60);

/// An account's tokens. Sealed at rest; its `Debug` shows no secret, so it can sit in
/// structs that are logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Atlassian API tokens authenticate as this email (HTTP Basic); everything else sends
    /// the access token as a Bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_user: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .field("basic_user", &self.basic_user)
            .finish()
    }
}

impl Credentials {
    /// A personal access token or API token: no refresh, no expiry.
    pub fn token(access_token: String, basic_user: Option<String>) -> Credentials {
        Credentials {
            access_token,
            refresh_token: None,
            expires_at: None,
            basic_user,
        }
    }

    /// Whether the access token should be refreshed before the next call.
    pub fn needs_refresh(&self, now: DateTime<Utc>) -> bool {
        self.refresh_token.is_some() && self.expires_at.is_some_and(|at| at - REFRESH_MARGIN <= now)
    }

    pub fn can_refresh(&self) -> bool {
        self.refresh_token.is_some()
    }

    pub(crate) fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.basic_user {
            Some(user) => request.basic_auth(user, Some(&self.access_token)),
            None => request.bearer_auth(&self.access_token),
        }
    }
}

/// A connector's settings beyond its credentials (the `config` of its row): what the person
/// gave, and what connecting found out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectorConfig {
    /// Jira and Confluence: the site, e.g. `https://acme.atlassian.net` (given with an API
    /// token; with OAuth, chosen among the account's sites, or found when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_url: Option<String>,
    /// Jira and Confluence over OAuth: the site's cloud id, for Atlassian's API gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_id: Option<String>,
}

/// Where a connector stands, as people see it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize, serde::Deserialize,
)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum ConnectorStatus {
    /// Created; waiting for the person to grant access at its consent page.
    PendingAuth,
    Connected,
    /// The provider refused a call for good (a missing scope, a wrong site); its status
    /// message says why.
    Error,
    /// The provider no longer accepts the credentials: connect again, or replace the token.
    ReauthRequired,
}

/// One connected account, as a provider call sees it.
#[derive(Debug, Clone)]
pub struct Account {
    pub connector_id: Uuid,
    pub credentials: Credentials,
    pub config: ConnectorConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let credentials = Credentials {
            access_token: "gho_secret".into(),
            refresh_token: Some("ghr_secret".into()),
            expires_at: None,
            basic_user: None,
        };
        assert!(!format!("{credentials:?}").contains("secret"));
    }

    #[test]
    fn refresh_is_due_a_minute_before_expiry_when_possible() {
        let now = Utc::now();
        let mut credentials = Credentials::token("t".into(), None);
        credentials.expires_at = Some(now + chrono::Duration::seconds(30));
        assert!(!credentials.needs_refresh(now), "nothing to refresh with");
        credentials.refresh_token = Some("r".into());
        assert!(credentials.needs_refresh(now));
        credentials.expires_at = Some(now + chrono::Duration::minutes(5));
        assert!(!credentials.needs_refresh(now));
    }
}
