//! The providers' settings, read from the environment by the API and the worker alike (both
//! flatten [`ProviderSettings`] into their command lines). Every base URL is configurable so
//! that the same code runs against the real providers and against local fakes.

use std::{collections::BTreeMap, num::NonZeroU32, str::FromStr, time::Duration};

use crate::Provider;

#[derive(Debug, Clone, clap::Args)]
pub struct ProviderSettings {
    /// GitHub's REST API.
    #[arg(
        long,
        env = "TASKFLEET_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub github_api_url: String,
    /// GitHub's OAuth pages (`/login/oauth/authorize`, `/login/oauth/access_token`).
    #[arg(
        long,
        env = "TASKFLEET_GITHUB_OAUTH_URL",
        default_value = "https://github.com"
    )]
    pub github_oauth_url: String,
    #[arg(long, env = "TASKFLEET_GITHUB_CLIENT_ID")]
    pub github_client_id: Option<String>,
    #[arg(long, env = "TASKFLEET_GITHUB_CLIENT_SECRET", hide_env_values = true)]
    pub github_client_secret: Option<ClientSecret>,
    /// Atlassian's API gateway (`/ex/jira/{cloudid}`, `/ex/confluence/{cloudid}`).
    #[arg(
        long,
        env = "TASKFLEET_ATLASSIAN_API_URL",
        default_value = "https://api.atlassian.com"
    )]
    pub atlassian_api_url: String,
    /// Atlassian's OAuth 2.0 (3LO) authorisation server.
    #[arg(
        long,
        env = "TASKFLEET_ATLASSIAN_AUTH_URL",
        default_value = "https://auth.atlassian.com"
    )]
    pub atlassian_auth_url: String,
    #[arg(long, env = "TASKFLEET_ATLASSIAN_CLIENT_ID")]
    pub atlassian_client_id: Option<String>,
    #[arg(
        long,
        env = "TASKFLEET_ATLASSIAN_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub atlassian_client_secret: Option<ClientSecret>,
    /// Google's APIs (`/gmail/v1`, `/drive/v3`).
    #[arg(
        long,
        env = "TASKFLEET_GOOGLE_API_URL",
        default_value = "https://www.googleapis.com"
    )]
    pub google_api_url: String,
    /// Google's consent page host (`/o/oauth2/v2/auth`).
    #[arg(
        long,
        env = "TASKFLEET_GOOGLE_AUTH_URL",
        default_value = "https://accounts.google.com"
    )]
    pub google_auth_url: String,
    /// Google's token endpoint (the whole URL).
    #[arg(
        long,
        env = "TASKFLEET_GOOGLE_TOKEN_URL",
        default_value = "https://oauth2.googleapis.com/token"
    )]
    pub google_token_url: String,
    #[arg(long, env = "TASKFLEET_GOOGLE_CLIENT_ID")]
    pub google_client_id: Option<String>,
    #[arg(long, env = "TASKFLEET_GOOGLE_CLIENT_SECRET", hide_env_values = true)]
    pub google_client_secret: Option<ClientSecret>,
    /// How long one provider request may take, in seconds (connecting: at most 5 s of it).
    #[arg(long, env = "TASKFLEET_PROVIDER_TIMEOUT_SECS", default_value_t = 10)]
    pub provider_timeout_secs: u64,
    /// Requests per second to each provider from one process, e.g. `github=50,gmail=100`.
    #[arg(
        long,
        env = "TASKFLEET_PROVIDER_RATE_LIMITS",
        default_value = "github=50,jira=50,confluence=50,gmail=100,gdrive=100"
    )]
    pub provider_rate_limits: RateLimits,
    /// Requests per second for one connector (one account) from one process.
    #[arg(
        long,
        env = "TASKFLEET_CONNECTOR_RATE_LIMITS",
        default_value = "github=10,jira=10,confluence=10,gmail=40,gdrive=20"
    )]
    pub connector_rate_limits: RateLimits,
    /// Failed calls in a row that open a provider's circuit breaker.
    #[arg(long, env = "TASKFLEET_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// How long an open circuit fails calls at once before one probe call, in seconds.
    #[arg(long, env = "TASKFLEET_BREAKER_COOLDOWN_SECS", default_value_t = 30)]
    pub breaker_cooldown_secs: u64,
    /// Accept Jira and Confluence sites, and tenants' LLM base URLs, on this machine or a
    /// private network (plain http, any path): for local fake providers only, never in
    /// production.
    #[arg(long, env = "TASKFLEET_ALLOW_LOCAL_SITES", default_value_t = false)]
    pub allow_local_sites: bool,
}

impl ProviderSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.provider_timeout_secs.max(1))
    }

    pub fn breaker_cooldown(&self) -> Duration {
        Duration::from_secs(self.breaker_cooldown_secs)
    }

    /// The OAuth client registered with `provider`'s authorisation server, if configured.
    pub fn client(&self, provider: Provider) -> Option<(String, ClientSecret)> {
        let (id, secret) = match provider {
            Provider::Github => (&self.github_client_id, &self.github_client_secret),
            Provider::Jira | Provider::Confluence => {
                (&self.atlassian_client_id, &self.atlassian_client_secret)
            }
            Provider::Gmail | Provider::Gdrive => {
                (&self.google_client_id, &self.google_client_secret)
            }
        };
        Some((id.clone()?, secret.clone()?))
    }

    /// The variables that configure `provider`'s OAuth client, for messages.
    pub fn client_variables(provider: Provider) -> &'static str {
        match provider {
            Provider::Github => "TASKFLEET_GITHUB_CLIENT_ID and TASKFLEET_GITHUB_CLIENT_SECRET",
            Provider::Jira | Provider::Confluence => {
                "TASKFLEET_ATLASSIAN_CLIENT_ID and TASKFLEET_ATLASSIAN_CLIENT_SECRET"
            }
            Provider::Gmail | Provider::Gdrive => {
                "TASKFLEET_GOOGLE_CLIENT_ID and TASKFLEET_GOOGLE_CLIENT_SECRET"
            }
        }
    }
}

/// An OAuth client secret: its `Debug` shows no secret, so settings can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(pub String);

impl FromStr for ClientSecret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(ClientSecret(s.to_owned()))
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Requests per second by provider; providers not named keep their default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits(BTreeMap<Provider, NonZeroU32>);

impl RateLimits {
    pub fn for_provider(&self, provider: Provider) -> NonZeroU32 {
        self.0
            .get(&provider)
            .copied()
            .unwrap_or(NonZeroU32::new(10).expect("10 is not zero"))
    }
}

impl FromStr for RateLimits {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut limits = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (provider, rate) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not `provider=requests per second`"))?;
            let provider =
                taskfleet_jobs::wire::parse::<Provider>(provider.trim()).ok_or_else(|| {
                    format!(
                        "unknown provider `{provider}` (github, jira, confluence, gmail, gdrive)"
                    )
                })?;
            let rate = rate
                .trim()
                .parse::<NonZeroU32>()
                .map_err(|_| format!("`{rate}` is not a positive number of requests per second"))?;
            limits.insert(provider, rate);
        }
        Ok(RateLimits(limits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug() {
        let secret: ClientSecret = "s3cr3t".parse().unwrap();
        assert_eq!(format!("{secret:?}"), "<redacted>");
    }

    #[test]
    fn rate_limits_name_providers() {
        let limits: RateLimits = "github=3, gdrive=7".parse().unwrap();
        assert_eq!(limits.for_provider(Provider::Github).get(), 3);
        assert_eq!(limits.for_provider(Provider::Gdrive).get(), 7);
        assert_eq!(limits.for_provider(Provider::Jira).get(), 10);
        assert!("slack=3".parse::<RateLimits>().is_err());
        assert!("github=0".parse::<RateLimits>().is_err());
        assert!("github".parse::<RateLimits>().is_err());
    }
}
