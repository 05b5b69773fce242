//! Tenant authentication: `Authorization: Bearer <api key>` on every `/v1` request.

use poem::{Request, http::Method};
use poem_openapi::{SecurityScheme, auth::Bearer};
use taskfleet_storage::{Role, Tenant};

use crate::{error::ApiError, state::AppState};

/// The tenant whose API key authenticated the request.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", key_name = "Authorization", checker = "tenant_of_key")]
pub struct TenantKey(pub Tenant);

/// The bearer key a request carries, if any: before authentication, for what runs ahead of
/// it (rate limits) or beside it (`/readyz`'s detail for operators).
pub(crate) fn bearer_key(req: &Request) -> Option<&str> {
    req.headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

/// The tenant of a bearer key; an unknown or revoked key is a JSON 401.
pub(crate) async fn tenant_of_key(req: &Request, bearer: Bearer) -> poem::Result<Tenant> {
    let state = req
        .data::<AppState>()
        .expect("AppState is attached to every route");
    match state.tenants.authenticate(&bearer.token).await {
        // A read key changes nothing: every method but a read is refused, whatever the route.
        Ok(Some(tenant))
            if tenant.role == Role::Reader
                && !matches!(*req.method(), Method::GET | Method::HEAD) =>
        {
            Err(ApiError::forbidden(
                "this key may only read: submitting, cancelling and changing need a submit key",
            )
            .into())
        }
        Ok(Some(tenant)) => Ok(tenant),
        Ok(None) => Err(ApiError::unauthorized("unknown, revoked or expired API key").into()),
        Err(err) => Err(ApiError::from(err).into()),
    }
}
