//! Tenant authentication: `Authorization: Bearer <api key>` on every `/v1` request.

use poem::Request;
use poem_openapi::{SecurityScheme, auth::Bearer};
use taskfleet_storage::Tenant;

use crate::{error::ApiError, state::AppState};

/// The tenant whose API key authenticated the request.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", key_name = "Authorization", checker = "tenant_of_key")]
pub struct TenantKey(pub Tenant);

/// The tenant of a bearer key; an unknown or revoked key is a JSON 401.
pub(crate) async fn tenant_of_key(req: &Request, bearer: Bearer) -> poem::Result<Tenant> {
    let state = req
        .data::<AppState>()
        .expect("AppState is attached to every route");
    match state.tenants.authenticate(&bearer.token).await {
        Ok(Some(tenant)) => Ok(tenant),
        Ok(None) => Err(ApiError::unauthorized("unknown or revoked API key").into()),
        Err(err) => Err(ApiError::from(err).into()),
    }
}
