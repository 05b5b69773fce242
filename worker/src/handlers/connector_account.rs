//! A connector's account opened for one job: its credentials unsealed, refreshed before
//! they expire and once after a 401, and what a provider's refusal means written onto the
//! connector for people to see (`reauth_required`, `error`).
//!
//! A refresh runs under a lock on the connector's row: Atlassian's refresh tokens work once,
//! so two jobs refreshing at the same time would leave one holding a dead token. The second
//! finds the credentials the first stored and uses them instead.

use chrono::Utc;
use serde_json::Value;
use taskfleet_connectors::{
    Account, Connector, ConnectorConfig, ConnectorStatus, Credentials, Disposition, Grant, Page,
    Provider, ProviderError,
};
use taskfleet_jobs::wire;
use taskfleet_storage::{ConnectorRecord, Scope, sealing::connector_context};
use uuid::Uuid;

use super::{JobContext, JobFailure};

/// Why a call through an account failed.
#[derive(Debug)]
pub enum AccountError {
    /// The provider refused or failed, for an account connected by `grant`.
    Provider { err: ProviderError, grant: Grant },
    /// Our side: the ledger, or credentials that do not open (a worker without the key that
    /// sealed them); worth retrying.
    Store(String),
    /// The connector was deleted, or has no credentials: retrying cannot help.
    Unusable(String),
}

pub struct ConnectorAccount<'a> {
    ctx: &'a JobContext,
    pub record: ConnectorRecord,
    pub provider: Provider,
    connector: &'a dyn Connector,
    account: Account,
    /// The credentials as stored, to tell whether another job refreshed them meanwhile.
    sealed: String,
    grant: Grant,
}

impl<'a> ConnectorAccount<'a> {
    /// Opens the tenant's connector `id`.
    pub async fn open(ctx: &'a JobContext, id: Uuid) -> Result<ConnectorAccount<'a>, AccountError> {
        let store = |what: &str, err: &dyn std::fmt::Display| {
            AccountError::Store(format!("could not {what}: {err}"))
        };
        let connectors = &ctx.services.connectors;
        let record = connectors
            .get(Scope::Tenant(ctx.tenant_id), id)
            .await
            .map_err(|err| store("read the connector", &err))?
            .ok_or_else(|| AccountError::Unusable(format!("no connector {id}: it was deleted")))?;
        let provider = wire::parse::<Provider>(&record.provider).ok_or_else(|| {
            AccountError::Unusable(format!("unknown provider {}", record.provider))
        })?;
        let sealed = connectors
            .sealed_credentials(ctx.tenant_id, id)
            .await
            .map_err(|err| store("read the credentials", &err))?
            .ok_or_else(|| {
                AccountError::Unusable(format!(
                    "connector {id} is {}: it has no credentials yet",
                    record.status
                ))
            })?;
        let credentials = unseal(ctx, &record, &sealed)?;
        let config: ConnectorConfig =
            serde_json::from_value(record.config.clone()).unwrap_or_default();
        let grant = wire::parse::<Grant>(&record.auth)
            .ok_or_else(|| AccountError::Unusable(format!("unknown auth {}", record.auth)))?;
        Ok(ConnectorAccount {
            ctx,
            grant,
            connector: ctx.services.providers.get(provider),
            account: Account {
                connector_id: id,
                credentials,
                config,
            },
            record,
            provider,
            sealed,
        })
    }

    /// The next page of items after `cursor`. Access is refreshed when it is about to expire,
    /// and once after a 401 (a second 401 is the provider's answer).
    pub async fn fetch(&mut self, cursor: Option<&Value>) -> Result<Page, AccountError> {
        self.refresh_if_due().await?;
        let mut refreshed = false;
        loop {
            match self.connector.fetch(&self.account, cursor).await {
                Err(ProviderError::Unauthorized { .. }) if self.may_refresh(&mut refreshed) => {
                    self.refresh().await?
                }
                other => return other.map_err(|err| self.provider_error(err)),
            }
        }
    }

    /// The provider's cheapest authenticated call; the account's name. Refreshes as
    /// [`ConnectorAccount::fetch`] does.
    pub async fn test(&mut self) -> Result<String, AccountError> {
        self.refresh_if_due().await?;
        let mut refreshed = false;
        loop {
            match self.connector.test(&self.account).await {
                Err(ProviderError::Unauthorized { .. }) if self.may_refresh(&mut refreshed) => {
                    self.refresh().await?
                }
                other => return other.map_err(|err| self.provider_error(err)),
            }
        }
    }

    async fn refresh_if_due(&mut self) -> Result<(), AccountError> {
        if self.account.credentials.needs_refresh(Utc::now()) {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Whether a call that got a 401 may refresh and try again: once per call.
    fn may_refresh(&self, refreshed: &mut bool) -> bool {
        let may = self.account.credentials.can_refresh() && !*refreshed;
        *refreshed = true;
        may
    }

    fn provider_error(&self, err: ProviderError) -> AccountError {
        AccountError::Provider {
            err,
            grant: self.grant,
        }
    }

    /// New credentials: those another job stored meanwhile, or the provider's answer to our
    /// refresh token.
    async fn refresh(&mut self) -> Result<(), AccountError> {
        let connectors = &self.ctx.services.connectors;
        let id = self.account.connector_id;
        let lock = connectors
            .lock_credentials(self.ctx.tenant_id, id)
            .await
            .map_err(|err| AccountError::Store(format!("could not lock the credentials: {err}")))?;
        match lock.sealed.clone() {
            Some(stored) if stored != self.sealed => {
                // Refreshed by another job while this one waited: use those.
                self.account.credentials = unseal(self.ctx, &self.record, &stored)?;
                self.sealed = stored;
                return Ok(());
            }
            None => {
                return Err(AccountError::Unusable(format!(
                    "connector {id} lost its credentials (deleted meanwhile)"
                )));
            }
            Some(_) => {}
        }
        let fresh = self
            .connector
            .refresh(&self.account.credentials)
            .await
            .map_err(|err| self.provider_error(err))?;
        let context = connector_context(self.record.tenant_id, id);
        let plain = serde_json::to_vec(&fresh).expect("credentials serialise");
        let sealed = self.ctx.services.sealer.seal(&plain, &context);
        lock.store(&sealed).await.map_err(|err| {
            AccountError::Store(format!("could not store refreshed credentials: {err}"))
        })?;
        tracing::info!(connector_id = %id, provider = %self.provider, "access refreshed");
        self.sealed = sealed;
        self.account.credentials = fresh;
        Ok(())
    }
}

fn unseal(
    ctx: &JobContext,
    record: &ConnectorRecord,
    sealed: &str,
) -> Result<Credentials, AccountError> {
    let context = connector_context(record.tenant_id, record.id);
    let plain = ctx
        .services
        .sealer
        .open(sealed, &context)
        .map_err(|err| AccountError::Store(format!("the credentials do not open: {err}")))?;
    serde_json::from_slice(&plain)
        .map_err(|err| AccountError::Store(format!("the credentials do not decode: {err}")))
}

impl AccountError {
    /// What the job does about it: retry (when the provider said, if it did), or stop
    /// for good.
    pub fn into_failure(self) -> JobFailure {
        match self {
            AccountError::Provider { err, grant } => match err.disposition() {
                Disposition::Retry { after } => JobFailure {
                    message: err.user_message(grant),
                    permanent: false,
                    retry_after: after,
                },
                Disposition::Reauthorize | Disposition::GiveUp => {
                    JobFailure::permanent(err.user_message(grant))
                }
            },
            AccountError::Store(message) => JobFailure::retryable(message),
            AccountError::Unusable(message) => JobFailure::permanent(message),
        }
    }
}

/// Writes what a provider's refusal means onto connector `id`: `reauth_required` when only
/// the person can grant access again, `error` when its settings or grants must change.
/// Failures worth retrying leave its status as it is.
pub async fn note(ctx: &JobContext, id: Uuid, err: &ProviderError, grant: Grant) {
    let status = match err.disposition() {
        Disposition::Reauthorize => ConnectorStatus::ReauthRequired,
        Disposition::GiveUp => ConnectorStatus::Error,
        Disposition::Retry { .. } => return,
    };
    let message = err.user_message(grant);
    let written = ctx
        .services
        .connectors
        .set_status(ctx.tenant_id, id, &wire::name(&status), Some(&message))
        .await;
    if let Err(store) = written {
        tracing::warn!(%store, "could not record the connector's status");
    }
}
