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
    Account, Connector, ConnectorConfig, Credentials, Disposition, Grant, Page, Provider,
    ProviderError,
};
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
    /// A 401 refreshes once; a second 401 is the provider's answer.
    refreshed_after_401: bool,
}

impl<'a> ConnectorAccount<'a> {
    /// Opens the tenant's connector `id`, refreshing its access if it is about to expire.
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
        let provider =
            taskfleet_jobs::wire::parse::<Provider>(&record.provider).ok_or_else(|| {
                AccountError::Unusable(format!("unknown provider {}", record.provider))
            })?;
        let sealed = connectors
            .sealed_credentials(id)
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
        let grant = if record.auth == "token" {
            Grant::Token
        } else {
            Grant::OAuth
        };
        let mut account = ConnectorAccount {
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
            refreshed_after_401: false,
        };
        if account.account.credentials.needs_refresh(Utc::now()) {
            account.refresh().await?;
        }
        Ok(account)
    }

    /// The next page of items after `cursor`.
    pub async fn fetch(&mut self, cursor: Option<&Value>) -> Result<Page, AccountError> {
        loop {
            match self.connector.fetch(&self.account, cursor).await {
                Err(ProviderError::Unauthorized { .. }) if self.may_refresh() => {
                    self.refresh().await?
                }
                other => return other.map_err(|err| self.provider_error(err)),
            }
        }
    }

    /// The provider's cheapest authenticated call; the account's name.
    pub async fn test(&mut self) -> Result<String, AccountError> {
        loop {
            match self.connector.test(&self.account).await {
                Err(ProviderError::Unauthorized { .. }) if self.may_refresh() => {
                    self.refresh().await?
                }
                other => return other.map_err(|err| self.provider_error(err)),
            }
        }
    }

    fn provider_error(&self, err: ProviderError) -> AccountError {
        AccountError::Provider {
            err,
            grant: self.grant,
        }
    }

    fn may_refresh(&mut self) -> bool {
        let may = self.account.credentials.can_refresh() && !self.refreshed_after_401;
        self.refreshed_after_401 = true;
        may
    }

    /// New credentials: those another job stored meanwhile, or the provider's answer to our
    /// refresh token.
    async fn refresh(&mut self) -> Result<(), AccountError> {
        let connectors = &self.ctx.services.connectors;
        let id = self.account.connector_id;
        let lock = connectors
            .lock_credentials(id)
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
        Disposition::Reauthorize => "reauth_required",
        Disposition::GiveUp => "error",
        Disposition::Retry { .. } => return,
    };
    let message = err.user_message(grant);
    let written = ctx
        .services
        .connectors
        .set_status(id, status, Some(&message))
        .await;
    if let Err(store) = written {
        tracing::warn!(%store, "could not record the connector's status");
    }
}
