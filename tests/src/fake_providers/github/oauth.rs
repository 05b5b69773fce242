//! GitHub's OAuth web flow: `GET /login/oauth/authorize` and `POST /login/oauth/access_token`.
//!
//! The token endpoint answers its failures with HTTP 200 and an `error` field, and answers in
//! JSON only when the request's `Accept` asks for it (form-encoded otherwise), as GitHub does.
//! Scopes come back comma-separated. With expiring tokens on (a GitHub App), the access token
//! lasts 8 hours and comes with a refresh token that is used up when refreshed.

use poem::{Request, Response, handler};
use serde_json::{Value, json};

use crate::fake_providers::{
    authorization::{self, CodeExchange, GrantError, Issuer, random_token},
    lock,
    params::Params,
    reply,
};

const ERRORS_DOC: &str = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/";

#[handler]
pub(crate) async fn authorize(req: &Request) -> Response {
    authorization::approve(req, Issuer::Github, false)
}

#[handler]
pub(crate) async fn issue_token(req: &Request, body: String) -> Response {
    // GitHub takes the parameters from the query string as well as from the body.
    let mut params = Params::body(req.content_type(), &body);
    if params.get("client_id").is_none() {
        params = Params::query(req);
    }
    let wants_json = req
        .header("Accept")
        .is_some_and(|accept| accept.contains("json"));
    let mut world = lock(req);
    let (client_id, client_secret) = (params.get("client_id"), params.get("client_secret"));
    let granted = match params.get("grant_type") {
        Some("refresh_token") => world.auth.redeem_refresh_token(
            Issuer::Github,
            client_id,
            client_secret,
            params.get("refresh_token"),
            true,
        ),
        _ => world
            .auth
            .redeem_code(
                Issuer::Github,
                CodeExchange {
                    client_id,
                    client_secret,
                    code: params.get("code"),
                    redirect_uri: params.get("redirect_uri"),
                    code_verifier: params.get("code_verifier"),
                },
            )
            .map(|consent| {
                consent
                    .scope
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(",")
            }),
    };
    let body = match granted {
        Ok(scope) => {
            let expiring = world.auth.github_expiring_tokens;
            let access_token = random_token(if expiring { "ghu_" } else { "gho_" }, 40);
            let refresh_token = expiring.then(|| random_token("ghr_", 76));
            world.auth.keep(
                Issuer::Github,
                &access_token,
                refresh_token.as_deref(),
                &scope,
            );
            let mut body =
                json!({"access_token": access_token, "token_type": "bearer", "scope": scope});
            if let Some(refresh_token) = refresh_token {
                body["expires_in"] = json!(28800);
                body["refresh_token"] = json!(refresh_token);
                body["refresh_token_expires_in"] = json!(15_897_600);
            }
            body
        }
        Err(error) => error_body(error),
    };
    if wants_json {
        reply::json(200, &body)
    } else {
        form_encoded(&body)
    }
}

fn error_body(error: GrantError) -> Value {
    let (error, description, uri) = match error {
        GrantError::InvalidClient => (
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
            format!("{ERRORS_DOC}#incorrect-client-credentials"),
        ),
        GrantError::RedirectUriMismatch => (
            "redirect_uri_mismatch",
            "The redirect_uri MUST match the registered callback URL for this application.",
            "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/#redirect-uri-mismatch2".to_owned(),
        ),
        GrantError::InvalidCode | GrantError::InvalidVerifier => (
            "bad_verification_code",
            "The code passed is incorrect or expired.",
            format!("{ERRORS_DOC}#bad-verification-code"),
        ),
        GrantError::InvalidRefreshToken => (
            "bad_refresh_token",
            "The refresh token passed is incorrect or expired.",
            "https://docs.github.com/apps/managing-github-apps/refreshing-user-to-server-access-tokens".to_owned(),
        ),
    };
    json!({"error": error, "error_description": description, "error_uri": uri})
}

/// GitHub's default answer format: `access_token=…&scope=…&token_type=bearer`.
fn form_encoded(body: &Value) -> Response {
    let pairs: Vec<(String, String)> = body
        .as_object()
        .expect("token answers are objects")
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (name.clone(), value)
        })
        .collect();
    Response::builder()
        .content_type("application/x-www-form-urlencoded; charset=utf-8")
        .body(serde_urlencoded::to_string(pairs).expect("strings encode"))
}
