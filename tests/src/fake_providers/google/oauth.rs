//! Google's OAuth 2.0 for web server apps: the consent page
//! (`/o/oauth2/v2/auth`, redirecting back with `code`, `state` and `scope`) and the token URL.
//!
//! A refresh token comes only when the consent asked for `access_type=offline`; refreshing
//! returns a new access token and keeps the refresh token (Google does not rotate them).

use poem::{Request, Response, handler};
use serde_json::json;

use crate::fake_providers::{
    authorization::{self, CLIENT_ID, CodeExchange, GrantError, Issuer, random_token},
    lock,
    params::Params,
    reply,
};

#[handler]
pub(crate) async fn authorize(req: &Request) -> Response {
    authorization::approve(req, Issuer::Google, true)
}

#[handler]
pub(crate) async fn issue_token(req: &Request, body: String) -> Response {
    let params = Params::body(req.content_type(), &body);
    let (client_id, client_secret) = (params.get("client_id"), params.get("client_secret"));
    let mut world = lock(req);
    let (granted, offline) = match params.get("grant_type") {
        Some("authorization_code") => {
            let consent = world.auth.redeem_code(
                Issuer::Google,
                CodeExchange {
                    client_id,
                    client_secret,
                    code: params.get("code"),
                    redirect_uri: params.get("redirect_uri"),
                    code_verifier: params.get("code_verifier"),
                },
            );
            let offline = consent.as_ref().is_ok_and(|consent| consent.offline);
            (consent.map(|consent| consent.scope), offline)
        }
        Some("refresh_token") => (
            world.auth.redeem_refresh_token(
                Issuer::Google,
                client_id,
                client_secret,
                params.get("refresh_token"),
                false,
            ),
            false,
        ),
        other => {
            return error(
                400,
                "unsupported_grant_type",
                &format!("Invalid grant_type: {}", other.unwrap_or_default()),
            );
        }
    };
    let scope = match granted {
        Ok(scope) => scope,
        Err(GrantError::InvalidClient) if client_id == Some(CLIENT_ID) => {
            return error(401, "invalid_client", "Unauthorized");
        }
        Err(GrantError::InvalidClient) => {
            return error(401, "invalid_client", "The OAuth client was not found.");
        }
        Err(GrantError::InvalidCode) => return error(400, "invalid_grant", "Bad Request"),
        Err(GrantError::InvalidVerifier) => {
            return error(400, "invalid_grant", "Invalid code verifier.");
        }
        Err(GrantError::RedirectUriMismatch) => {
            return error(400, "redirect_uri_mismatch", "Bad Request");
        }
        Err(GrantError::InvalidRefreshToken) => {
            return error(400, "invalid_grant", "Token has been expired or revoked.");
        }
    };
    let access_token = random_token("ya29.a0A", 180);
    let refresh_token = offline.then(|| random_token("1//0", 103));
    world.auth.keep(
        Issuer::Google,
        &access_token,
        refresh_token.as_deref(),
        &scope,
    );
    let mut body = json!({
        "access_token": access_token,
        "expires_in": 3599,
        "scope": scope,
        "token_type": "Bearer",
    });
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    reply::json(200, &body)
}

fn error(status: u16, error: &str, description: &str) -> Response {
    reply::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}
