//! An operator's rate limits for one tenant (`PUT /v1/tenants/{tenant}/rate-limits`), which
//! override the fleet's `TASKFLEET_RATE_LIMIT_*` for that tenant's keys, class by class, and
//! what applies to it (`GET`). Enforced by `rate_limit`.

use poem::web::Data;
use poem_openapi::{Object, OpenApi, param::Path, payload::Json};
use serde_json::json;
use taskfleet_jobs::AuditAction;
use taskfleet_storage::{AuditEntry, RateLimitOverride};

use crate::{
    auth::TenantKey,
    error::ApiError,
    fleet::operator_only,
    rate_limit::{Class, TenantLimits},
    state::AppState,
    usage::tenant_named,
};

/// A tenant's own limits. Each is written as `TASKFLEET_RATE_LIMIT_*` is: `RATE/s` (or `/m`,
/// `/h`), optionally `:BURST`, or `off` for no limit; `null` or absent leaves the class to the
/// fleet's default.
#[derive(Debug, Object)]
pub struct RateLimitsInput {
    /// Submissions and changes (anything but a read), e.g. `500/s:1000`.
    #[oai(nullable)]
    pub submit: Option<String>,
    /// Reads (GETs).
    #[oai(nullable)]
    pub read: Option<String>,
    /// Opening SSE streams.
    #[oai(nullable)]
    pub stream: Option<String>,
}

/// One class's limit for a tenant.
#[derive(Debug, Object)]
pub struct ClassRateLimit {
    /// The tenant's own limit; null when the fleet's default applies.
    #[oai(rename = "override", nullable)]
    pub own: Option<String>,
    /// The limit its keys are held to: the tenant's own, or the fleet's default.
    pub effective: String,
}

/// The rate limits of a tenant's keys, by class of route. Each is a rate and a burst
/// (`100/s:200`) or `off`.
#[derive(Debug, Object)]
pub struct TenantRateLimits {
    pub tenant: String,
    pub submit: ClassRateLimit,
    pub read: ClassRateLimit,
    pub stream: ClassRateLimit,
}

pub struct TenantLimitsApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Fleet")]
impl TenantLimitsApi {
    /// Set a tenant's rate limits (operator)
    ///
    /// Replaces the tenant's own limits; a class sent as `null`, or left out, goes back to the
    /// fleet's default. The API process that answers applies them at once, the others within
    /// 5 s. Each key counts against them from its next request once the process has seen
    /// the key authenticate.
    #[oai(
        path = "/tenants/:tenant/rate-limits",
        method = "put",
        operation_id = "setTenantRateLimits"
    )]
    async fn set(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// The tenant's name.
        tenant: Path<String>,
        body: Json<RateLimitsInput>,
    ) -> Result<Json<TenantRateLimits>, ApiError> {
        operator_only(&auth)?;
        let RateLimitsInput {
            submit,
            read,
            stream,
        } = body.0;
        let limits = TenantLimits::parse(&RateLimitOverride {
            submit,
            read,
            stream,
        })
        .map_err(ApiError::invalid)?;
        let id = tenant_named(&state, &tenant).await?;
        let stored = limits.stored();
        state.tenant_rate_limits.set(id, &stored).await?;
        let answer = answer(&state, tenant.0.clone(), &limits);
        // Applied here at once (the other replicas read it within their refresh), before
        // anything else is awaited.
        state.rate_limits.apply(id, limits);
        let changed = AuditEntry::new(AuditAction::RateLimitsChanged, Some(id), &tenant.0)
            .with_detail(json!({
                "submit": stored.submit, "read": stored.read, "stream": stored.stream,
            }));
        crate::audit::record(&state, &auth, changed).await;
        Ok(Json(answer))
    }

    /// A tenant's rate limits (operator)
    ///
    /// Per class of route: the tenant's own limit, if any, and the one its keys are held to.
    #[oai(
        path = "/tenants/:tenant/rate-limits",
        method = "get",
        operation_id = "getTenantRateLimits"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// The tenant's name.
        tenant: Path<String>,
    ) -> Result<Json<TenantRateLimits>, ApiError> {
        operator_only(&auth)?;
        let id = tenant_named(&state, &tenant).await?;
        let stored = state.tenant_rate_limits.get(id).await?;
        let limits = TenantLimits::parse(&stored)
            .map_err(|err| ApiError::internal("bad_rate_limit", err))?;
        Ok(Json(answer(&state, tenant.0, &limits)))
    }
}

fn answer(state: &AppState, tenant: String, limits: &TenantLimits) -> TenantRateLimits {
    let class = |class: Class| {
        let own = limits.get(class).as_ref();
        ClassRateLimit {
            own: own.map(ToString::to_string),
            effective: own
                .unwrap_or_else(|| state.rate_limits.default_limit(class))
                .to_string(),
        }
    };
    TenantRateLimits {
        tenant,
        submit: class(Class::Submit),
        read: class(Class::Read),
        stream: class(Class::Stream),
    }
}
