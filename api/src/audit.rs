//! The audit log in the API: `GET /v1/audit` for operators, and [`record`], how a handler
//! adds what its key just changed.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{Object, OpenApi, param::Query, payload::Json};
use serde_json::Value;
use taskfleet_jobs::AuditAction;
use taskfleet_storage::{Actor, AuditEntry, AuditFilter, AuditRecord};

use crate::{
    auth::TenantKey, error::ApiError, fleet::operator_only, paging, state::AppState,
    usage::tenant_named,
};

/// One change: who made it, what it was, and to what.
#[derive(Debug, Object)]
pub struct AuditEvent {
    pub id: uuid::Uuid,
    pub at: DateTime<Utc>,
    /// The tenant acted upon; null for the fleet's own settings (queue pauses).
    #[oai(nullable)]
    pub tenant: Option<String>,
    /// The API key as `taskfleet-api keys list` shows it (`tfk_ab12cd34…`), `cli:<user>` for
    /// the admin command line, or `<tenant> (token: <sub>)` for an identity provider's token.
    pub actor: String,
    /// The acting key's tenant; null for the command line.
    #[oai(nullable)]
    pub actor_tenant: Option<String>,
    pub action: AuditAction,
    /// What was acted on: a key (as `actor` shows keys), a queue's name, a tenant's name (its
    /// budget, rate limits or LLM provider), or a schedule's, connector's or job's id.
    pub target: String,
    /// A few facts: a budget's `old` and `new` tokens a month (null for the fleet's
    /// default), a connector's provider and name, which of its fields changed. Never a secret.
    pub detail: Value,
}

impl From<AuditRecord> for AuditEvent {
    fn from(record: AuditRecord) -> AuditEvent {
        AuditEvent {
            id: record.id,
            at: record.at,
            tenant: record.tenant,
            actor: record.actor,
            actor_tenant: record.actor_tenant,
            action: record.action,
            target: record.target,
            detail: record.detail,
        }
    }
}

#[derive(Debug, Object)]
pub struct AuditPage {
    /// Newest first.
    pub events: Vec<AuditEvent>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

pub struct AuditApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Audit")]
impl AuditApi {
    /// The audit log (operator)
    ///
    /// Who created or revoked an API key, paused or resumed a queue, changed a schedule, a
    /// connector, a tenant's token budget, rate limits or LLM provider, or retried a job by
    /// hand:
    /// newest first, one page at a time. Only changes that happened are listed; events are
    /// kept as long as the longest-kept finished jobs.
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/audit", method = "get", operation_id = "listAuditEvents")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// Only what was done to this tenant (by name).
        tenant: Query<Option<String>>,
        /// Only this kind of change.
        action: Query<Option<AuditAction>>,
        /// Only changes at or after this instant.
        since: Query<Option<DateTime<Utc>>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<AuditPage>, ApiError> {
        operator_only(&auth)?;
        let tenant_id = match tenant.0 {
            None => None,
            Some(name) => Some(tenant_named(&state, &name).await?),
        };
        let limit = limit.0.unwrap_or(paging::DEFAULT_LIMIT);
        let filter = AuditFilter {
            tenant_id,
            action: action.0,
            since: since.0,
            before: paging::before(cursor.0)?,
            limit,
        };
        let records = state.audit.list(&filter).await?;
        let next_cursor = paging::next_cursor(records.iter().map(|r| r.id), limit);
        Ok(Json(AuditPage {
            events: records.into_iter().map(AuditEvent::from).collect(),
            next_cursor,
        }))
    }
}

/// Records what the key of `auth` just changed, once the change has committed (a change
/// whose storage function runs a transaction records itself in it). A failure is logged
/// rather than answered: the change stands, and a client told it failed would make it again.
pub(crate) async fn record(state: &AppState, auth: &TenantKey, entry: AuditEntry) {
    if let Err(err) = state.audit.record(&Actor::of(&auth.0), &entry).await {
        tracing::error!(
            %err,
            action = ?entry.action,
            target = %entry.target,
            "could not record an audit event"
        );
    }
}
