//! Atlassian's OAuth 2.0 (3LO): `GET /authorize` and `POST /oauth/token`.
//!
//! A refresh token comes only with the `offline_access` scope, and refreshing rotates it: the
//! answer carries a new refresh token and the one used is refused from then on (403
//! invalid_grant), as Atlassian's rotating refresh tokens are.

use poem::{Request, Response, handler};
use serde_json::json;

use crate::fake_providers::{
    authorization::{self, CodeExchange, GrantError, Issuer, random_token},
    lock,
    params::Params,
    reply,
};

#[handler]
pub(crate) async fn authorize(req: &Request) -> Response {
    authorization::approve(req, Issuer::Atlassian, false)
}

#[handler]
pub(crate) async fn issue_token(req: &Request, body: String) -> Response {
    let params = Params::body(req.content_type(), &body);
    let (client_id, client_secret) = (params.get("client_id"), params.get("client_secret"));
    let mut world = lock(req);
    let granted = match params.get("grant_type") {
        Some("authorization_code") => world
            .auth
            .redeem_code(
                Issuer::Atlassian,
                CodeExchange {
                    client_id,
                    client_secret,
                    code: params.get("code"),
                    redirect_uri: params.get("redirect_uri"),
                    code_verifier: params.get("code_verifier"),
                },
            )
            .map(|consent| consent.scope),
        Some("refresh_token") => world.auth.redeem_refresh_token(
            Issuer::Atlassian,
            client_id,
            client_secret,
            params.get("refresh_token"),
            true,
        ),
        _ => {
            return reply::json(
                400,
                &json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant type"}),
            );
        }
    };
    let scope = match granted {
        Ok(scope) => scope,
        Err(GrantError::InvalidClient) => {
            return reply::json(
                401,
                &json!({"error": "access_denied", "error_description": "Unauthorized"}),
            );
        }
        Err(GrantError::InvalidRefreshToken) => {
            return reply::json(
                403,
                &json!({"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}),
            );
        }
        Err(
            GrantError::InvalidCode | GrantError::RedirectUriMismatch | GrantError::InvalidVerifier,
        ) => {
            return reply::json(
                403,
                &json!({"error": "invalid_grant", "error_description": "Invalid authorization code"}),
            );
        }
    };
    let access_token = jwt_like();
    let refresh_token = scope
        .split_whitespace()
        .any(|scope| scope == "offline_access")
        .then(jwt_like);
    world.auth.keep(
        Issuer::Atlassian,
        &access_token,
        refresh_token.as_deref(),
        &scope,
    );
    let mut body = json!({
        "access_token": access_token,
        "expires_in": 3600,
        "token_type": "Bearer",
        "scope": scope,
    });
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    reply::json(200, &body)
}

/// Atlassian's tokens are JWTs: three dot-separated base64url parts.
fn jwt_like() -> String {
    format!(
        "eyJraWQiOiJmYWtlLWF1dGgiLCJhbGciOiJSUzI1NiJ9.{}.{}",
        random_token("eyJ", 160),
        random_token("", 86)
    )
}
