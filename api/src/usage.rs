//! LLM tokens: what a tenant spent this month, by kind of call and model, against its
//! monthly budget (`GET /v1/usage`); and an operator's budget for one tenant (`PUT
//! /v1/tenants/{tenant}/budget`), which overrides the fleet's `TASKFLEET_LLM_MONTHLY_TOKENS`.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::MaybeUndefined,
};
use serde_json::json;
use taskfleet_jobs::AuditAction;
use taskfleet_storage::{AuditEntry, BudgetStatus, Role, UsageLine};
use uuid::Uuid;

use crate::{auth::TenantKey, error::ApiError, fleet::operator_only, state::AppState};

/// A tenant's monthly token budget and where it stands.
#[derive(Debug, Object)]
pub struct TokenBudget {
    /// Tokens a month; absent when no budget applies.
    #[oai(nullable)]
    pub limit: Option<i64>,
    /// Whether `limit` is the tenant's own (set by an operator) rather than the fleet's.
    pub overridden: bool,
    /// Spent this month, input and output.
    pub used: i64,
    /// Held by calls in flight.
    pub reserved: i64,
    /// What calls may still take; absent when no budget applies.
    #[oai(nullable)]
    pub remaining: Option<i64>,
    /// Whether new chats are refused (429 `budget_exceeded`) until the month resets or the
    /// budget changes: a chat call did not fit, or what is spent leaves no room for an answer.
    pub exhausted: bool,
}

impl From<&BudgetStatus> for TokenBudget {
    fn from(status: &BudgetStatus) -> TokenBudget {
        TokenBudget {
            limit: status.limit,
            overridden: status.overridden,
            used: status.used,
            reserved: status.reserved,
            remaining: status.remaining(),
            exhausted: status.exhausted(),
        }
    }
}

/// This month's tokens of one kind of call and one model.
#[derive(Debug, Object)]
pub struct UsageByKind {
    /// `chat`, `prioritise`, `embed` or `test`.
    pub kind: String,
    pub model: String,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

impl From<UsageLine> for UsageByKind {
    fn from(line: UsageLine) -> UsageByKind {
        UsageByKind {
            kind: line.purpose,
            model: line.model,
            calls: line.calls,
            input_tokens: line.input_tokens,
            output_tokens: line.output_tokens,
        }
    }
}

#[derive(Debug, Object)]
pub struct UsageReport {
    /// The month counted: a calendar month in UTC.
    pub month_start: DateTime<Utc>,
    /// When the count starts again at 0.
    pub resets_at: DateTime<Utc>,
    pub budget: TokenBudget,
    pub by_kind: Vec<UsageByKind>,
}

#[derive(Debug, Object)]
pub struct BudgetInput {
    /// Tokens a month for this tenant (0 stops its LLM calls), or `null` to fall back to the
    /// fleet's default.
    #[oai(validator(minimum(value = "0")))]
    pub monthly_tokens: MaybeUndefined<i64>,
}

#[derive(Debug, Object)]
pub struct TenantBudget {
    pub tenant: String,
    pub month_start: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
    pub budget: TokenBudget,
}

pub struct UsageApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Llm")]
impl UsageApi {
    /// LLM tokens used this month
    ///
    /// The tenant's, against its budget, by kind of call and model. Operator keys may name
    /// another tenant.
    #[oai(path = "/usage", method = "get", operation_id = "getUsage")]
    async fn usage(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// Another tenant's usage (by name). Operator keys only, or a tenant key's own name.
        tenant: Query<Option<String>>,
    ) -> Result<Json<UsageReport>, ApiError> {
        let tenant = match tenant.0 {
            None => auth.0.id,
            Some(name) if name == auth.0.name => auth.0.id,
            Some(name) if auth.0.role == Role::Operator => tenant_named(&state, &name).await?,
            Some(_) => {
                return Err(ApiError::forbidden(
                    "only operator keys can read another tenant's usage",
                ));
            }
        };
        let (status, lines) = tokio::try_join!(
            state.budgets.status(tenant),
            state.budgets.usage_this_month(tenant)
        )?;
        Ok(Json(UsageReport {
            month_start: status.month_start,
            resets_at: status.resets_at,
            budget: TokenBudget::from(&status),
            by_kind: lines.into_iter().map(Into::into).collect(),
        }))
    }

    /// Set a tenant's monthly token budget
    ///
    /// Operator keys only. Overrides the fleet's default for that tenant; `null` removes the
    /// override. Calls in flight finish; the next ones are held to the new budget.
    #[oai(
        path = "/tenants/:tenant/budget",
        method = "put",
        operation_id = "setTenantBudget"
    )]
    async fn set_budget(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// The tenant's name.
        tenant: Path<String>,
        body: Json<BudgetInput>,
    ) -> Result<Json<TenantBudget>, ApiError> {
        operator_only(&auth)?;
        let tokens = match body.0.monthly_tokens {
            MaybeUndefined::Value(tokens) => Some(tokens),
            MaybeUndefined::Null => None,
            MaybeUndefined::Undefined => {
                return Err(ApiError::invalid(
                    "send `monthly_tokens`: tokens a month, or null for the fleet's default",
                ));
            }
        };
        let name = tenant.0;
        let overridden = state
            .budgets
            .set_override(&name, tokens)
            .await?
            .ok_or_else(|| no_tenant(&name))?;
        let changed = AuditEntry::new(
            AuditAction::BudgetChanged,
            Some(overridden.tenant_id),
            &name,
        )
        .with_detail(json!({"old": overridden.previous, "new": tokens}));
        crate::audit::record(&state, &auth, changed).await;
        let status = state.budgets.status(overridden.tenant_id).await?;
        Ok(Json(TenantBudget {
            tenant: name,
            month_start: status.month_start,
            resets_at: status.resets_at,
            budget: TokenBudget::from(&status),
        }))
    }
}

/// The id of the tenant called `name`; 404 when there is none.
pub(crate) async fn tenant_named(state: &AppState, name: &str) -> Result<Uuid, ApiError> {
    state
        .tenants
        .find(name)
        .await?
        .ok_or_else(|| no_tenant(name))
}

fn no_tenant(name: &str) -> ApiError {
    ApiError::not_found(format!("no tenant `{name}`"))
}
