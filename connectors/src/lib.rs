//! taskfleet's SaaS clients: GitHub, Jira, Confluence, Gmail and Google Drive behind one
//! [`Connector`] trait. A connector takes a person through OAuth (or accepts a personal or
//! API token), refreshes its access, tests it with the provider's cheapest authenticated
//! call, and fetches the person's work items page by page from a cursor, normalised into
//! [`Item`]s. Every call goes through one HTTP layer ([`http`]) with rate limits, retries,
//! a circuit breaker and latency metrics, so a provider file holds only what is particular
//! to its provider: endpoints, pagination and mapping.
//!
//! No storage here: the caller keeps the sealed credentials and the cursor.

pub mod account;
mod adf;
pub mod atlassian;
pub mod breaker;
mod confluence;
pub mod error;
mod gdrive;
mod github;
mod gmail;
mod google;
pub mod http;
pub mod item;
mod jira;
pub mod oauth;
pub mod provider;
pub mod settings;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use account::{Account, ConnectorConfig, ConnectorStatus, Credentials};
pub use error::{Disposition, Grant, ProviderError};
pub use item::Page;
pub use oauth::Pkce;
pub use provider::Provider;
pub use settings::ProviderSettings;
pub use taskfleet_jobs::Item;

pub use breaker::Breaker;

use crate::{http::Http, oauth::OAuthClient};

/// One provider's client.
#[async_trait]
pub trait Connector: Send + Sync {
    fn provider(&self) -> Provider;

    fn http(&self) -> &Http;

    /// This fleet's OAuth client at the provider, if configured.
    fn oauth(&self) -> Option<&OAuthClient>;

    /// The provider's consent page for read-only access; `state` and the PKCE challenge go
    /// with it and come back, with a code, to `redirect_uri`.
    fn authorize_url(
        &self,
        state: &str,
        pkce: &Pkce,
        redirect_uri: &str,
    ) -> Result<String, ProviderError> {
        Ok(oauth_client(self)?.consent_url(state, pkce, redirect_uri))
    }

    /// Trades the code the consent page sent back for tokens.
    async fn exchange_code(
        &self,
        code: &str,
        pkce: &Pkce,
        redirect_uri: &str,
    ) -> Result<Credentials, ProviderError> {
        oauth_client(self)?
            .exchange(self.http(), code, pkce, redirect_uri)
            .await
    }

    /// New credentials from the refresh token; a refusal is
    /// [`ProviderError::RefreshRefused`].
    async fn refresh(&self, credentials: &Credentials) -> Result<Credentials, ProviderError> {
        oauth_client(self)?.refresh(self.http(), credentials).await
    }

    /// What later calls need to know about a freshly connected account (Atlassian: which
    /// cloud site); the config unchanged for most providers.
    async fn discover(&self, account: &Account) -> Result<ConnectorConfig, ProviderError> {
        Ok(account.config.clone())
    }

    /// The provider's cheapest authenticated call; the account's name on success.
    async fn test(&self, account: &Account) -> Result<String, ProviderError>;

    /// The next page of the account's work items after `cursor` (`None`: a first, full
    /// sweep). Each page's cursor resumes exactly after it, so a sweep cut short resumes
    /// from the last page stored; the last page of a sweep is `done`, and its cursor waits
    /// for what changes after it.
    async fn fetch(&self, account: &Account, cursor: Option<&Value>)
    -> Result<Page, ProviderError>;
}

/// The five connectors, sharing one HTTP layer, and the circuit breakers of LLM endpoints.
pub struct Providers {
    connectors: BTreeMap<Provider, Box<dyn Connector>>,
    allow_local_sites: bool,
    /// One per LLM base URL: with tenants bringing their own endpoints, one tenant's broken
    /// endpoint must not stop everyone's calls.
    llm_breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    breaker_failures: u32,
    breaker_cooldown: std::time::Duration,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.connectors.keys()).finish()
    }
}

impl Providers {
    pub fn new(settings: &ProviderSettings) -> Providers {
        let http = Arc::new(Http::new(settings));
        let connectors: BTreeMap<Provider, Box<dyn Connector>> = BTreeMap::from([
            (
                Provider::Github,
                Box::new(github::Github::new(http.clone(), settings)) as Box<dyn Connector>,
            ),
            (
                Provider::Jira,
                Box::new(jira::Jira::new(http.clone(), settings)),
            ),
            (
                Provider::Confluence,
                Box::new(confluence::Confluence::new(http.clone(), settings)),
            ),
            (
                Provider::Gmail,
                Box::new(gmail::Gmail::new(http.clone(), settings)),
            ),
            (
                Provider::Gdrive,
                Box::new(gdrive::Gdrive::new(http, settings)),
            ),
        ]);
        Providers {
            connectors,
            allow_local_sites: settings.allow_local_sites,
            llm_breakers: Mutex::new(HashMap::new()),
            breaker_failures: settings.breaker_failures,
            breaker_cooldown: settings.breaker_cooldown(),
        }
    }

    /// The circuit breaker of the LLM endpoint at `base_url` (its gauge is labelled `llm`),
    /// with the connectors' thresholds.
    pub fn llm_breaker(&self, base_url: &str) -> Arc<Breaker> {
        let mut breakers = self.llm_breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers
            .entry(base_url.trim_end_matches('/').to_owned())
            .or_insert_with(|| {
                Arc::new(Breaker::new(
                    "llm",
                    self.breaker_failures,
                    self.breaker_cooldown,
                ))
            })
            .clone()
    }

    /// Whether sites on this machine or a private network are let in (fake providers only).
    pub fn allow_local_sites(&self) -> bool {
        self.allow_local_sites
    }

    pub fn get(&self, provider: Provider) -> &dyn Connector {
        self.connectors[&provider].as_ref()
    }

    /// A Jira or Confluence site URL as a person typed it, checked
    /// ([`atlassian::check_site_url`]).
    pub fn check_site_url(&self, site: &str) -> Result<String, String> {
        atlassian::check_site_url(site, self.allow_local_sites)
    }
}

/// The connector's OAuth client, or the settings it lacks.
fn oauth_client<C: Connector + ?Sized>(connector: &C) -> Result<&OAuthClient, ProviderError> {
    connector
        .oauth()
        .ok_or_else(|| ProviderError::NotConfigured {
            provider: connector.provider(),
            detail: format!(
                "no OAuth client: set {}",
                ProviderSettings::client_variables(connector.provider())
            ),
        })
}

/// A stored cursor as the provider's own cursor type; one that does not decode (written by
/// an older version) starts a new sweep.
fn read_cursor<T: DeserializeOwned + Default>(cursor: Option<&Value>) -> T {
    cursor
        .and_then(|value| serde_json::from_value(value.clone()).ok())
        .unwrap_or_default()
}

/// A cursor as stored.
fn write_cursor<T: serde::Serialize>(cursor: &T) -> Value {
    serde_json::to_value(cursor).expect("cursors serialise")
}

/// `base` and `path` joined without doubling the slash between them.
fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}
