//! How a provider call can fail, in words a person can act on, and what the job should do
//! about it: retry (when, if the provider said), ask for the account to be reconnected, or
//! give up.

use std::time::Duration;

use crate::Provider;

/// A failed provider call. The messages name the provider and never carry a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// 401: the access token is not (or no longer) accepted.
    #[error("{provider} rejected the token")]
    Unauthorized { provider: Provider },
    /// The token endpoint refused a refresh (`invalid_grant`, `bad_refresh_token`): only the
    /// person can grant access again.
    #[error("{provider} refused to renew the access ({detail})")]
    RefreshRefused { provider: Provider, detail: String },
    /// 403 that is not a rate limit: the grant lacks a scope, or the account lacks access.
    #[error("{provider} refused access ({detail})")]
    Forbidden { provider: Provider, detail: String },
    #[error("{provider} has no such resource ({detail})")]
    NotFound { provider: Provider, detail: String },
    /// Any other 4xx: the request itself was refused.
    #[error("{provider} refused the request with {status} ({detail})")]
    Rejected {
        provider: Provider,
        status: u16,
        detail: String,
    },
    /// 429, or a 403 that says a rate limit was hit; `retry_after` is the provider's own delay.
    #[error("{provider} rate limit reached")]
    RateLimited {
        provider: Provider,
        retry_after: Duration,
    },
    #[error("{provider} did not answer in {} s", .after.as_secs())]
    Timeout { provider: Provider, after: Duration },
    #[error("{provider} could not be reached ({detail})")]
    Unreachable { provider: Provider, detail: String },
    /// 5xx, after the retries inside the call.
    #[error("{provider} answered {status}")]
    ServerError {
        provider: Provider,
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The circuit breaker is open after repeated failures: no call was made.
    #[error("{provider} is failing; calls to it are paused")]
    CircuitOpen {
        provider: Provider,
        retry_after: Duration,
    },
    /// A 2xx whose body does not have the provider's documented shape.
    #[error("{provider} sent an answer taskfleet cannot read ({detail})")]
    Unreadable { provider: Provider, detail: String },
    /// The fleet lacks a setting this provider needs (an OAuth client id, a site URL).
    #[error("{provider} is not set up ({detail})")]
    NotConfigured { provider: Provider, detail: String },
}

/// How an account was connected (a connector's `auth`), which decides what mends a refused
/// credential.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum, serde::Serialize, serde::Deserialize,
)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// Through the provider's consent page: connecting again mends it.
    OAuth,
    /// A personal access token or API token the person pasted: only a new token mends it.
    Token,
}

/// What the job should do after a [`ProviderError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try again later: after `after` when the provider said, else with the job's backoff.
    Retry { after: Option<Duration> },
    /// The person must reconnect the account; retrying cannot help.
    Reauthorize,
    /// Retrying cannot help until the connector's settings or grants change.
    GiveUp,
}

impl ProviderError {
    pub fn provider(&self) -> Provider {
        match self {
            ProviderError::Unauthorized { provider }
            | ProviderError::RefreshRefused { provider, .. }
            | ProviderError::Forbidden { provider, .. }
            | ProviderError::NotFound { provider, .. }
            | ProviderError::Rejected { provider, .. }
            | ProviderError::RateLimited { provider, .. }
            | ProviderError::Timeout { provider, .. }
            | ProviderError::Unreachable { provider, .. }
            | ProviderError::ServerError { provider, .. }
            | ProviderError::CircuitOpen { provider, .. }
            | ProviderError::Unreadable { provider, .. }
            | ProviderError::NotConfigured { provider, .. } => *provider,
        }
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            ProviderError::Unauthorized { .. } | ProviderError::RefreshRefused { .. } => {
                Disposition::Reauthorize
            }
            ProviderError::Forbidden { .. }
            | ProviderError::NotFound { .. }
            | ProviderError::Rejected { .. }
            | ProviderError::NotConfigured { .. } => Disposition::GiveUp,
            ProviderError::RateLimited { retry_after, .. }
            | ProviderError::CircuitOpen { retry_after, .. } => Disposition::Retry {
                after: Some(*retry_after),
            },
            ProviderError::ServerError { retry_after, .. } => Disposition::Retry {
                after: *retry_after,
            },
            ProviderError::Timeout { .. }
            | ProviderError::Unreachable { .. }
            | ProviderError::Unreadable { .. } => Disposition::Retry { after: None },
        }
    }

    /// What the person can do about it, for an account connected by `grant`.
    pub fn action(&self, grant: Grant) -> String {
        match (self.disposition(), grant) {
            (Disposition::Reauthorize, Grant::OAuth) => "reconnect the account".to_owned(),
            (Disposition::Reauthorize, Grant::Token) => "replace the token".to_owned(),
            (Disposition::GiveUp, grant) => match (self, grant) {
                (ProviderError::Forbidden { .. }, Grant::OAuth) => {
                    "reconnect the account and grant the read scopes".to_owned()
                }
                (ProviderError::Forbidden { .. }, Grant::Token) => {
                    "give the token read access, or replace it".to_owned()
                }
                _ => "check the connector's settings".to_owned(),
            },
            (Disposition::Retry { after: Some(after) }, _) => {
                format!("retry in {} s", (after.as_secs_f64().ceil() as u64).max(1))
            }
            (Disposition::Retry { after: None }, _) => "press to retry".to_owned(),
        }
    }

    /// The error and its action in one line: "GitHub rejected the token: reconnect the account".
    pub fn user_message(&self, grant: Grant) -> String {
        format!("{self}: {}", self.action(grant))
    }
}

/// At most this much of a provider's error body goes into a message.
const DETAIL_CHARS: usize = 200;

/// A provider's error text, shortened for a message.
pub(crate) fn detail(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(DETAIL_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened_and_what_to_do() {
        let github = ProviderError::Unauthorized {
            provider: Provider::Github,
        };
        assert_eq!(
            github.user_message(Grant::OAuth),
            "GitHub rejected the token: reconnect the account"
        );
        assert_eq!(
            github.user_message(Grant::Token),
            "GitHub rejected the token: replace the token"
        );
        let jira = ProviderError::RateLimited {
            provider: Provider::Jira,
            retry_after: Duration::from_secs(40),
        };
        assert_eq!(
            jira.user_message(Grant::Token),
            "Jira rate limit reached: retry in 40 s"
        );
        let gmail = ProviderError::Timeout {
            provider: Provider::Gmail,
            after: Duration::from_secs(10),
        };
        assert_eq!(
            gmail.user_message(Grant::OAuth),
            "Gmail did not answer in 10 s: press to retry"
        );
        assert_eq!(gmail.disposition(), Disposition::Retry { after: None });
    }

    #[test]
    fn grants_are_named_as_the_ledger_stores_them() {
        assert_eq!(taskfleet_jobs::wire::name(&Grant::OAuth), "oauth");
        assert_eq!(taskfleet_jobs::wire::name(&Grant::Token), "token");
    }

    #[test]
    fn details_are_cut_on_a_character_boundary() {
        let long = "é".repeat(300);
        let cut = detail(&long);
        assert_eq!(cut.chars().count(), DETAIL_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(detail("  short "), "short");
    }
}
