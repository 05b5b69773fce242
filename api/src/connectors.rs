//! `/v1/connectors`: connect SaaS accounts (OAuth, or a personal/API token), read them back
//! without their secrets, rename them or replace their token, delete them, ask for a sync or
//! a test. The OAuth callback is `oauth_callback.rs`; `test-all` is `test_all.rs`.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, payload::Json};
use serde_json::json;
use taskfleet_connectors::{
    ConnectorConfig, ConnectorStatus, Credentials, Grant, Pkce, Provider, ProviderSettings,
    oauth::random_token,
};
use taskfleet_jobs::{AuditAction, JobSpec, wire};
use taskfleet_storage::{
    Actor, AuditEntry, ConnectorChange, ConnectorError, ConnectorJob, ConnectorRecord,
    NewConnector, Requested, Scope, connectors::oauth_state_context, sealing::connector_context,
};
use uuid::Uuid;

use crate::{
    auth::TenantKey,
    error::ApiError,
    jobs::{Created, Job},
    json::SerdeJson,
    observe::RequestId,
    state::AppState,
};

/// A connector's settings. Nothing secret.
#[derive(Debug, Clone, Default, Object)]
pub struct ConnectorSettings {
    /// Jira and Confluence: the site, e.g. `https://acme.atlassian.net`.
    #[oai(nullable)]
    pub site_url: Option<String>,
    /// Jira and Confluence over OAuth: the site's cloud id, found when connecting.
    #[oai(read_only)]
    #[oai(nullable)]
    pub cloud_id: Option<String>,
}

#[derive(Debug, Object)]
pub struct ConnectorTest {
    pub ok: bool,
    /// "connected as ana@acme.test", or what failed and what to do.
    pub message: String,
    pub at: DateTime<Utc>,
}

/// A connected (or connecting) account. Its credentials never leave the server.
#[derive(Debug, Object)]
pub struct Connector {
    pub id: Uuid,
    pub provider: Provider,
    pub name: String,
    pub auth: Grant,
    pub status: ConnectorStatus,
    /// Why the status is `error` or `reauth_required`.
    #[oai(nullable)]
    pub status_message: Option<String>,
    pub config: ConnectorSettings,
    /// Where to send the person to grant read access; in answers that made a new OAuth
    /// state (valid 10 minutes, once).
    #[oai(skip_serializing_if_is_none)]
    pub authorize_url: Option<String>,
    /// When an ingest last finished a sweep.
    #[oai(nullable)]
    pub last_sync_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub last_test: Option<ConnectorTest>,
    /// Tasks it brought in.
    pub item_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct ConnectorList {
    pub connectors: Vec<Connector>,
}

/// A connector to create: OAuth when there is no `token`.
#[derive(Debug, Object)]
pub struct ConnectorInput {
    pub provider: Provider,
    /// Unique within the tenant; default the provider's name (numbered when taken).
    #[oai(validator(min_length = 1, max_length = 200))]
    #[oai(nullable)]
    pub name: Option<String>,
    #[oai(nullable)]
    pub config: Option<ConnectorSettingsInput>,
    /// Connects at once without OAuth: a GitHub personal access token (a fine-grained one
    /// with read access to issues and pull requests), or an Atlassian API token with `email`
    /// and `config.site_url`.
    #[oai(validator(min_length = 1, max_length = 4096))]
    #[oai(nullable)]
    pub token: Option<String>,
    /// The Atlassian account's email, with an API token.
    #[oai(validator(min_length = 3, max_length = 320))]
    #[oai(nullable)]
    pub email: Option<String>,
}

#[derive(Debug, Object)]
pub struct ConnectorSettingsInput {
    /// Jira and Confluence: the site, e.g. `https://acme.atlassian.net` (needed with an API
    /// token; with OAuth, the site to use when the grant reaches several).
    #[oai(nullable)]
    pub site_url: Option<String>,
}

#[derive(Debug, Object)]
pub struct ConnectorPatch {
    #[oai(validator(min_length = 1, max_length = 200))]
    #[oai(nullable)]
    pub name: Option<String>,
    /// A token connector's site (an OAuth connector's is chosen when connecting).
    #[oai(nullable)]
    pub config: Option<ConnectorSettingsInput>,
    /// A new token for a token connector (with `email` for Atlassian): it is `connected`
    /// again.
    #[oai(validator(min_length = 1, max_length = 4096))]
    #[oai(nullable)]
    pub token: Option<String>,
    #[oai(validator(min_length = 3, max_length = 320))]
    #[oai(nullable)]
    pub email: Option<String>,
}

#[derive(ApiResponse)]
pub enum ConnectorCreated {
    /// Created: `pending_auth` with an `authorize_url`, or `connected` (a token) with its
    /// first ingest enqueued.
    #[oai(status = 201)]
    Created(Json<Connector>),
}

#[derive(ApiResponse)]
pub enum Deleted {
    /// Deleted, its credentials with it; its tasks stay, marked as from a removed source,
    /// and their vectors are removed by an `embed.items` job.
    #[oai(status = 204)]
    Deleted,
}

impl From<ConnectorError> for ApiError {
    fn from(err: ConnectorError) -> ApiError {
        match err {
            ConnectorError::Db(err) => err.into(),
            taken @ ConnectorError::NameTaken(_) => {
                ApiError::conflict("name_taken", taken.to_string())
            }
            missing @ ConnectorError::NotFound(_) => ApiError::not_found(missing.to_string()),
            not_ready @ ConnectorError::NotReady { .. } => {
                ApiError::conflict("invalid_state", not_ready.to_string())
            }
            ConnectorError::Enqueue(message) => {
                tracing::error!(%message, "could not enqueue a connector's job");
                ApiError::from(&sqlx::Error::Protocol(message))
            }
        }
    }
}

fn present(record: ConnectorRecord, authorize_url: Option<String>) -> Connector {
    let provider = provider_of(&record);
    let config: ConnectorConfig = serde_json::from_value(record.config).unwrap_or_default();
    let last_test = match (record.last_test_at, record.last_test_ok) {
        (Some(at), Some(ok)) => Some(ConnectorTest {
            ok,
            message: record.last_test_message.unwrap_or_default(),
            at,
        }),
        _ => None,
    };
    Connector {
        id: record.id,
        provider,
        name: record.name,
        auth: wire::parse(&record.auth).expect("the table admits only known grants"),
        status: wire::parse(&record.status).expect("the table admits only known statuses"),
        status_message: record.status_message,
        config: ConnectorSettings {
            site_url: config.site_url,
            cloud_id: config.cloud_id,
        },
        authorize_url,
        last_sync_at: record.last_sync_at,
        last_test,
        item_count: record.item_count,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

fn no_connector(id: Uuid) -> ApiError {
    ApiError::not_found(format!("no connector {id}"))
}

/// Where a provider sends the person back with a code.
pub(crate) fn redirect_uri(state: &AppState, provider: Provider) -> String {
    format!(
        "{}/v1/oauth/callback/{}",
        state.public_url.trim_end_matches('/'),
        provider.name()
    )
}

/// A new OAuth state and PKCE pair for connector `id`: the state (to store hashed), the
/// sealed verifier (to store), and the consent page's URL.
fn consent(
    state: &AppState,
    provider: Provider,
    id: Uuid,
) -> Result<(String, String, String), ApiError> {
    let oauth_state = random_token();
    let pkce = Pkce::new();
    let url = state
        .providers
        .get(provider)
        .authorize_url(&oauth_state, &pkce, &redirect_uri(state, provider))
        .map_err(|err| {
            ApiError::invalid(format!(
                "{err}; or connect with a token instead (`token` in the body) where {provider} \
                 offers one"
            ))
        })?;
    let sealed = state
        .sealer
        .seal(pkce.verifier.as_bytes(), &oauth_state_context(id));
    Ok((oauth_state, sealed, url))
}

/// The credentials a token connection stores, checked for the provider.
fn token_credentials(
    provider: Provider,
    token: &str,
    email: Option<&str>,
) -> Result<Credentials, ApiError> {
    match provider {
        Provider::Github if email.is_some() => {
            Err(ApiError::invalid("a GitHub token needs no `email`"))
        }
        Provider::Github => Ok(Credentials::token(token.to_owned(), None)),
        Provider::Jira | Provider::Confluence => {
            let email = email.ok_or_else(|| {
                ApiError::invalid("an Atlassian API token needs the account's `email`")
            })?;
            Ok(Credentials::token(token.to_owned(), Some(email.to_owned())))
        }
        Provider::Gmail | Provider::Gdrive => Err(ApiError::invalid(format!(
            "{provider} connects through OAuth only (Google has no personal tokens): leave out \
             `token` and open the authorize_url; the fleet needs {}",
            ProviderSettings::client_variables(provider)
        ))),
    }
}

/// Credentials sealed for connector `id` of `tenant_id`.
pub(crate) fn seal(
    state: &AppState,
    tenant_id: Uuid,
    id: Uuid,
    credentials: &Credentials,
) -> String {
    state.sealer.seal(
        &serde_json::to_vec(credentials).expect("credentials serialise"),
        &connector_context(tenant_id, id),
    )
}

/// The settings a person gave, checked.
fn settings(
    state: &AppState,
    provider: Provider,
    input: Option<&ConnectorSettingsInput>,
) -> Result<ConnectorConfig, ApiError> {
    let site_url = match input.and_then(|c| c.site_url.as_deref()) {
        None => None,
        Some(_) if !matches!(provider, Provider::Jira | Provider::Confluence) => {
            return Err(ApiError::invalid(format!(
                "`config.site_url` is for Jira and Confluence, not {provider}"
            )));
        }
        Some(site) => Some(
            state
                .providers
                .check_site_url(site)
                .map_err(ApiError::invalid)?,
        ),
    };
    Ok(ConnectorConfig {
        site_url,
        cloud_id: None,
    })
}

/// Checks that a job or schedule target naming a connector names one of the tenant's that
/// has credentials.
pub async fn check_target(
    state: &AppState,
    tenant_id: Uuid,
    spec: &JobSpec,
) -> Result<(), ApiError> {
    let id = match spec {
        JobSpec::IngestConnector(job) => job.connector_id,
        JobSpec::TestConnector(job) => job.connector_id,
        _ => return Ok(()),
    };
    match state.connectors.get(Scope::Tenant(tenant_id), id).await? {
        None => Err(no_connector(id)),
        Some(record) if wire::parse(&record.status) == Some(ConnectorStatus::PendingAuth) => {
            Err(ApiError::conflict(
                "invalid_state",
                format!(
                    "connector {id} is pending_auth: finish connecting it first (open its authorize_url)"
                ),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// The name a connector gets when none was given: the provider's, numbered when taken.
async fn default_name(
    state: &AppState,
    tenant_id: Uuid,
    provider: Provider,
) -> Result<String, ApiError> {
    let taken: Vec<String> = state
        .connectors
        .list(Scope::Tenant(tenant_id))
        .await?
        .into_iter()
        .map(|record| record.name)
        .collect();
    let base = provider.display_name();
    Ok((1..)
        .map(|n| {
            if n == 1 {
                base.to_owned()
            } else {
                format!("{base} {n}")
            }
        })
        .find(|name| !taken.contains(name))
        .expect("some number is free"))
}

/// Enqueues `job` for the tenant's connector `id`, or finds the one waiting.
async fn request(
    state: &AppState,
    tenant_id: Uuid,
    id: Uuid,
    job: ConnectorJob,
    request_id: &RequestId,
) -> Result<Created<Job>, ApiError> {
    let requested = state
        .connectors
        .request(tenant_id, id, job, Some(request_id.0.clone()))
        .await?;
    state.wake_dispatcher();
    Ok(match requested {
        Requested::Created(record) => Created::Created(SerdeJson(Job::from_record(record)?)),
        Requested::Waiting(record) => Created::Existing(SerdeJson(Job::from_record(record)?)),
    })
}

/// The tenant's connector `id`, or a 404.
async fn own_connector(
    state: &AppState,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<ConnectorRecord, ApiError> {
    state
        .connectors
        .get(Scope::Tenant(tenant_id), id)
        .await?
        .ok_or_else(|| no_connector(id))
}

/// The record's provider.
fn provider_of(record: &ConnectorRecord) -> Provider {
    wire::parse(&record.provider).expect("the table admits only known providers")
}

pub struct ConnectorsApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Connectors")]
impl ConnectorsApi {
    /// Connect an account
    ///
    /// Without `token`: OAuth. The answer is `pending_auth` with an `authorize_url` (state
    /// and PKCE, read-only scopes); the provider sends the person back to
    /// `/v1/oauth/callback/{provider}`, which connects the account and starts its first
    /// ingest. With `token` (GitHub personal access token; Atlassian API token with `email`
    /// and `config.site_url`): `connected` at once, first ingest enqueued.
    #[oai(
        path = "/connectors",
        method = "post",
        operation_id = "createConnector"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        body: Json<ConnectorInput>,
    ) -> Result<ConnectorCreated, ApiError> {
        let input = body.0;
        let provider = input.provider;
        let config = settings(&state, provider, input.config.as_ref())?;
        let name = match &input.name {
            Some(name) => name.clone(),
            None => default_name(&state, auth.0.id, provider).await?,
        };
        let new = NewConnector {
            id: Uuid::now_v7(),
            tenant_id: auth.0.id,
            provider: provider.name(),
            name,
            config: serde_json::to_value(&config).expect("settings serialise"),
        };
        let record = match &input.token {
            Some(token) => {
                let credentials = token_credentials(provider, token, input.email.as_deref())?;
                if credentials.basic_user.is_some() && config.site_url.is_none() {
                    return Err(ApiError::invalid(
                        "an Atlassian API token needs `config.site_url`, e.g. https://acme.atlassian.net",
                    ));
                }
                let sealed = seal(&state, new.tenant_id, new.id, &credentials);
                let (record, _) = state
                    .connectors
                    .create_connected(
                        &new,
                        &sealed,
                        Some(request_id.0.0.clone()),
                        &Actor::of(&auth.0),
                    )
                    .await?;
                state.wake_dispatcher();
                present(record, None)
            }
            None => {
                if input.email.is_some() {
                    return Err(ApiError::invalid(
                        "`email` goes with an Atlassian API `token`",
                    ));
                }
                let (oauth_state, sealed, url) = consent(&state, provider, new.id)?;
                let record = state
                    .connectors
                    .create_pending(&new, &oauth_state, &sealed, &Actor::of(&auth.0))
                    .await?;
                present(record, Some(url))
            }
        };
        Ok(ConnectorCreated::Created(Json(record)))
    }

    /// List connectors
    ///
    /// The key's own tenant's (an operator key's too: connectors are people's accounts, not
    /// the fleet's).
    #[oai(path = "/connectors", method = "get", operation_id = "listConnectors")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
    ) -> Result<Json<ConnectorList>, ApiError> {
        let connectors = state
            .connectors
            .list(Scope::Tenant(auth.0.id))
            .await?
            .into_iter()
            .map(|record| present(record, None))
            .collect();
        Ok(Json(ConnectorList { connectors }))
    }

    /// Get a connector
    ///
    /// Status, last sync, last test and item count; never a token.
    #[oai(
        path = "/connectors/:id",
        method = "get",
        operation_id = "getConnector"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<Json<Connector>, ApiError> {
        let record = own_connector(&state, auth.0.id, id.0).await?;
        Ok(Json(present(record, None)))
    }

    /// Rename a connector, change its site, or replace its token
    ///
    /// An OAuth connector's site is the one chosen when it was connected, and its access is
    /// renewed through `POST /v1/connectors/{id}/authorize`; a token connector takes a new
    /// `token` here and is `connected` again.
    #[oai(
        path = "/connectors/:id",
        method = "patch",
        operation_id = "updateConnector"
    )]
    async fn update(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
        body: Json<ConnectorPatch>,
    ) -> Result<Json<Connector>, ApiError> {
        let patch = body.0;
        let current = own_connector(&state, auth.0.id, id.0).await?;
        let provider = provider_of(&current);
        let oauth = wire::parse(&current.auth) == Some(Grant::OAuth);
        let config = match &patch.config {
            None => None,
            Some(input) => {
                let mut config: ConnectorConfig =
                    serde_json::from_value(current.config.clone()).unwrap_or_default();
                let site_url = settings(&state, provider, Some(input))?.site_url;
                if oauth && site_url != config.site_url {
                    return Err(ApiError::conflict(
                        "invalid_state",
                        "an OAuth connector reaches the site chosen when it was connected: \
                         delete it and connect again with `config.site_url`",
                    ));
                }
                config.site_url = site_url;
                Some(serde_json::to_value(config).expect("settings serialise"))
            }
        };
        let sealed = match &patch.token {
            None if patch.email.is_some() => {
                return Err(ApiError::invalid("`email` goes with a new `token`"));
            }
            None => None,
            Some(_) if oauth => {
                return Err(ApiError::conflict(
                    "invalid_state",
                    format!(
                        "connector {} was connected through OAuth: POST \
                         /v1/connectors/{}/authorize to connect it again",
                        id.0, id.0
                    ),
                ));
            }
            Some(token) => {
                let credentials = token_credentials(provider, token, patch.email.as_deref())?;
                Some(seal(&state, auth.0.id, id.0, &credentials))
            }
        };
        let change = ConnectorChange {
            name: patch.name.as_deref(),
            config: config.as_ref(),
            sealed_credentials: sealed.as_deref(),
        };
        let record = state
            .connectors
            .update(auth.0.id, id.0, &change)
            .await?
            .ok_or_else(|| no_connector(id.0))?;
        let changed: Vec<&str> = [
            ("name", change.name.is_some()),
            ("config", change.config.is_some()),
            ("token", change.sealed_credentials.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, given)| given.then_some(field))
        .collect();
        let updated = AuditEntry::new(AuditAction::ConnectorUpdated, Some(auth.0.id), id.0)
            .with_detail(json!({"name": record.name, "changed": changed}));
        crate::audit::record(&state, &auth, updated).await;
        Ok(Json(present(record, None)))
    }

    /// Delete a connector
    #[oai(
        path = "/connectors/:id",
        method = "delete",
        operation_id = "deleteConnector"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<Deleted, ApiError> {
        let by = Actor::of(&auth.0);
        match state.connectors.delete(auth.0.id, id.0, &by).await? {
            true => {
                state.wake_dispatcher();
                Ok(Deleted::Deleted)
            }
            false => Err(no_connector(id.0)),
        }
    }

    /// Connect again through OAuth
    ///
    /// A fresh `authorize_url` for the connector: to finish connecting it, or to grant
    /// access again after `reauth_required`.
    #[oai(
        path = "/connectors/:id/authorize",
        method = "post",
        operation_id = "authorizeConnector"
    )]
    async fn authorize(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<Json<Connector>, ApiError> {
        let current = own_connector(&state, auth.0.id, id.0).await?;
        if wire::parse(&current.auth) == Some(Grant::Token) {
            return Err(ApiError::conflict(
                "invalid_state",
                "this connector uses a token: delete it and connect again to use OAuth",
            ));
        }
        let provider = provider_of(&current);
        let (oauth_state, sealed, url) = consent(&state, provider, id.0)?;
        let record = state
            .connectors
            .renew_oauth_state(auth.0.id, id.0, &oauth_state, &sealed)
            .await?;
        Ok(Json(present(record, Some(url))))
    }

    /// Sync a connector now
    ///
    /// Enqueues an `ingest.connector` job (201), or returns the one already waiting (200).
    #[oai(
        path = "/connectors/:id/sync",
        method = "post",
        operation_id = "syncConnector"
    )]
    async fn sync(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        id: Path<Uuid>,
    ) -> Result<Created<Job>, ApiError> {
        request(&state, auth.0.id, id.0, ConnectorJob::Ingest, &request_id).await
    }

    /// Test a connector's credentials
    ///
    /// Enqueues a `test.connector` job (201), or returns the one already waiting (200). Its
    /// result, and the connector's `last_test`, say `ok` or what failed and what to do.
    #[oai(
        path = "/connectors/:id/test",
        method = "post",
        operation_id = "testConnector"
    )]
    async fn test(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        id: Path<Uuid>,
    ) -> Result<Created<Job>, ApiError> {
        request(&state, auth.0.id, id.0, ConnectorJob::Test, &request_id).await
    }
}

/// The tenant's connectors' test jobs, for `POST /v1/connectors/test-all`.
pub async fn request_tests(
    state: &AppState,
    tenant_id: Uuid,
    request_id: &RequestId,
) -> Result<Vec<(ConnectorRecord, taskfleet_storage::JobRecord)>, ApiError> {
    let tests = state
        .connectors
        .request_tests(tenant_id, Some(request_id.0.clone()))
        .await?;
    state.wake_dispatcher();
    Ok(tests)
}
