//! Tenant authentication: `Authorization: Bearer <api key>` on every `/v1` request, or, when
//! an identity provider is configured, `Bearer <JWT>` from it (`jwt`).

use poem::{
    Request,
    http::Method,
    web::headers::{self, Authorization, HeaderMapExt},
};
use poem_openapi::{SecurityScheme, auth::Bearer};
use taskfleet_storage::{Role, Tenant};

use crate::{error::ApiError, jwt::looks_like_jwt, state::AppState};

/// The tenant whose API key (or token) authenticated the request.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", key_name = "Authorization", checker = "tenant_of_key")]
pub struct TenantKey(pub Tenant);

/// The bearer key a request carries, if any: before authentication, for what runs ahead of
/// it (rate limits) or beside it (`/readyz`'s detail for operators). Read as authentication
/// reads it (any case of `Bearer`, spaces trimmed), so no spelling of the header that
/// authenticates escapes the rate limits.
pub(crate) fn bearer_key(req: &Request) -> Option<String> {
    req.headers()
        .typed_get::<Authorization<headers::authorization::Bearer>>()
        .map(|auth| auth.token().to_owned())
}

/// The tenant of a bearer key or token; an unknown, revoked or refused one is a JSON 401.
pub(crate) async fn tenant_of_key(req: &Request, bearer: Bearer) -> poem::Result<Tenant> {
    let state = req
        .data::<AppState>()
        .expect("AppState is attached to every route");
    let tenant = authenticate(state, &bearer.token).await?;
    state.rate_limits.learn(&bearer.token, tenant.id);
    // A read key changes nothing: every method but a read is refused, whatever the route.
    if tenant.role == Role::Reader && !matches!(*req.method(), Method::GET | Method::HEAD) {
        let message = match tenant.key_id {
            Some(_) => {
                "this key may only read: submitting, cancelling and changing need a submit key"
            }
            None => {
                "this token may only read: submitting, cancelling and changing need the \
                 `submit` scope"
            }
        };
        return Err(ApiError::forbidden(message).into());
    }
    Ok(tenant)
}

/// The tenant a bearer credential stands for: an API key, or with an identity provider
/// configured, a JWT from it. Whatever accepts a key asks here, so a token is accepted
/// wherever a key is.
pub(crate) async fn authenticate(state: &AppState, bearer: &str) -> Result<Tenant, ApiError> {
    if let Some(jwt) = state.jwt.as_ref().filter(|_| looks_like_jwt(bearer)) {
        let grant = jwt.verify(bearer).await?;
        // Tenants are created with their first API key (`keys create`), never by a token: a
        // misconfigured provider must not be able to conjure tenants.
        let id = state.tenants.find(&grant.tenant).await?.ok_or_else(|| {
            ApiError::unauthorized(format!(
                "token's tenant `{}` is not known here",
                grant.tenant
            ))
        })?;
        return Ok(Tenant {
            id,
            name: grant.tenant,
            role: grant.role,
            key_id: None,
            key_prefix: None,
            token_subject: grant.subject,
        });
    }
    state
        .tenants
        .authenticate(bearer)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown, revoked or expired API key"))
}
