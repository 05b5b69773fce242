//! JWT bearer tokens from an identity provider, accepted beside API keys (ADR 0016): a token
//! is checked against the provider's keys (`jwks`), its issuer, audience and lifetime, and
//! names a tenant and a scope in claims of its own.

use std::str::FromStr;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::ValueEnum;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use taskfleet_storage::Role;

use crate::{cli::KeyScope, error::ApiError, jwks::Jwks};

/// How far a token's `exp` and `nbf` may be off, for clocks that disagree a little.
const LEEWAY_SECS: u64 = 30;

/// The identity provider whose tokens are accepted. Off unless TASKFLEET_JWT_ISSUER is set,
/// and then TASKFLEET_JWT_AUDIENCE and TASKFLEET_JWT_JWKS must be set too.
#[derive(Debug, Clone, clap::Args)]
pub struct JwtArgs {
    /// The issuer (`iss`) tokens must carry, e.g. `https://login.example.com/`.
    #[arg(long, env = "TASKFLEET_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The audience (`aud`) tokens must carry: what the provider calls this API.
    #[arg(long, env = "TASKFLEET_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The provider's signing keys: a JWKS file, or an `https://` URL fetched at start and
    /// every ten minutes.
    #[arg(long, env = "TASKFLEET_JWT_JWKS")]
    pub jwt_jwks: Option<String>,
    /// The claim naming the token's tenant, one that already exists here.
    #[arg(long, env = "TASKFLEET_JWT_TENANT_CLAIM", default_value = "tenant")]
    pub jwt_tenant_claim: String,
    /// The claim holding the token's scopes (space-separated, or an array): `submit`,
    /// `read` or `operator`, the strongest counting.
    #[arg(long, env = "TASKFLEET_JWT_SCOPE_CLAIM", default_value = "scope")]
    pub jwt_scope_claim: String,
}

impl JwtArgs {
    /// The verifier these settings describe, its keys loaded; none when JWTs are off.
    pub async fn verifier(&self) -> anyhow::Result<Option<Verifier>> {
        let set = |value: &Option<String>| value.clone().filter(|value| !value.is_empty());
        let settings = [
            ("TASKFLEET_JWT_ISSUER", set(&self.jwt_issuer)),
            ("TASKFLEET_JWT_AUDIENCE", set(&self.jwt_audience)),
            ("TASKFLEET_JWT_JWKS", set(&self.jwt_jwks)),
        ];
        let [(_, Some(issuer)), (_, Some(audience)), (_, Some(jwks))] = &settings else {
            let missing: Vec<&str> = settings
                .iter()
                .filter(|(_, value)| value.is_none())
                .map(|(name, _)| *name)
                .collect();
            anyhow::ensure!(
                missing.len() == settings.len(),
                "JWT bearer tokens need TASKFLEET_JWT_ISSUER, TASKFLEET_JWT_AUDIENCE and \
                 TASKFLEET_JWT_JWKS together: {} not set",
                missing.join(" and ")
            );
            return Ok(None);
        };
        // The algorithm is the token's, checked against its key before each verification.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Ok(Some(Verifier {
            jwks: Jwks::load(jwks).await?,
            validation,
            tenant_claim: self.jwt_tenant_claim.clone(),
            scope_claim: self.jwt_scope_claim.clone(),
        }))
    }
}

/// Checks tokens from the identity provider.
pub struct Verifier {
    jwks: std::sync::Arc<Jwks>,
    validation: Validation,
    tenant_claim: String,
    scope_claim: String,
}

/// What a verified token grants: a role in the tenant named so.
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    pub tenant: String,
    pub role: Role,
    /// The token's `sub`: whom the provider issued it to.
    pub subject: Option<String>,
}

/// Why a token is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The token does not prove who sent it: 401.
    Unauthenticated(String),
    /// The token is good but grants nothing here: 403, as for a read key that writes. Not
    /// 401: the caller is known, and a fresh token from the same provider would be refused
    /// the same way, so asking it to authenticate again would only send it round in circles.
    NoScope(String),
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Unauthenticated(why) => ApiError::unauthorized(why),
            Refusal::NoScope(why) => ApiError::forbidden(why),
        }
    }
}

fn refused(why: impl Into<String>) -> Refusal {
    Refusal::Unauthenticated(why.into())
}

/// Whether a bearer credential is shaped like a JWT (three base64url parts joined by dots)
/// rather than an API key (`tfk_` and hex).
pub fn looks_like_jwt(bearer: &str) -> bool {
    bearer.split('.').count() == 3
        && bearer
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_'))
}

impl Verifier {
    /// The tenant and role a token grants, or why it grants none.
    pub async fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        let (alg, kid) = header(token)?;
        let key = self
            .jwks
            .key(kid.as_deref())
            .await
            .ok_or_else(|| match &kid {
                Some(_) => {
                    refused("token's signing key (`kid`) is not among the identity provider's keys")
                }
                None => refused(
                    "token names no signing key (`kid`) and the identity provider has several",
                ),
            })?;
        if !key.algorithms.contains(&alg) {
            return Err(refused(format!(
                "token algorithm `{alg:?}` does not match its signing key"
            )));
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|err| refused(why_refused(err.kind())))?
            .claims;
        let tenant = claims
            .get(&self.tenant_claim)
            .and_then(Value::as_str)
            .filter(|tenant| !tenant.is_empty())
            .ok_or_else(|| {
                refused(format!(
                    "token has no `{}` claim naming a tenant",
                    self.tenant_claim
                ))
            })?;
        let role = strongest_role(claims.get(&self.scope_claim)).ok_or_else(|| {
            Refusal::NoScope(format!(
                "token carries no taskfleet scope: its `{}` claim names none of `operator`, \
                 `submit` and `read`",
                self.scope_claim
            ))
        })?;
        Ok(Grant {
            tenant: tenant.to_owned(),
            role,
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        })
    }
}

/// The token's algorithm and key id, read before anything is verified. Only asymmetric
/// algorithms pass: `none` would need no signature, and an HMAC one could be checked against
/// a public key taken for a secret.
fn header(token: &str) -> Result<(Algorithm, Option<String>), Refusal> {
    #[derive(serde::Deserialize)]
    struct Header {
        alg: String,
        kid: Option<String>,
    }
    let encoded = token.split('.').next().unwrap_or_default();
    let header: Header = URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| refused("token is not a well-formed JWT"))?;
    match Algorithm::from_str(&header.alg) {
        Ok(alg) if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
            Ok((alg, header.kid))
        }
        _ => {
            let shown: String = header.alg.chars().take(16).collect();
            Err(refused(format!(
                "token algorithm `{shown}` is not accepted"
            )))
        }
    }
}

fn why_refused(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token is not valid yet (`nbf`)".into(),
        ErrorKind::InvalidSignature => "token signature is not valid".into(),
        ErrorKind::InvalidAudience => "token audience is not taskfleet's".into(),
        ErrorKind::InvalidIssuer => "token issuer is not the one taskfleet trusts".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token has no `{claim}` claim"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "token is not a well-formed JWT".into(),
        _ => "token could not be verified".into(),
    }
}

/// The strongest of the scopes a scope claim names (a space-separated string, or an array).
fn strongest_role(scopes: Option<&Value>) -> Option<Role> {
    let named: Vec<&str> = match scopes? {
        Value::String(scopes) => scopes.split_whitespace().collect(),
        Value::Array(scopes) => scopes.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    let granted: Vec<KeyScope> = named
        .into_iter()
        .filter_map(|scope| KeyScope::from_str(scope, false).ok())
        .collect();
    [KeyScope::Operator, KeyScope::Submit, KeyScope::Read]
        .into_iter()
        .find(|scope| granted.contains(scope))
        .map(KeyScope::role)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_strongest_scope_named_counts_and_other_scopes_are_ignored() {
        let role = |scopes: Value| strongest_role(Some(&scopes));
        assert_eq!(role(json!("openid read submit")), Some(Role::Tenant));
        assert_eq!(role(json!(["read", "operator"])), Some(Role::Operator));
        assert_eq!(role(json!("profile read")), Some(Role::Reader));
        assert_eq!(role(json!("openid Submit email")), None);
        assert_eq!(role(json!(7)), None);
        assert_eq!(strongest_role(None), None);
    }

    #[test]
    fn api_keys_are_not_taken_for_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
        assert!(!looks_like_jwt(&format!("tfk_{}", "ab".repeat(32))));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("a.b c.d"));
    }

    #[test]
    fn none_and_hmac_algorithms_are_refused_before_any_key_is_looked_at() {
        let token = |fields: Value| format!("{}.e30.", URL_SAFE_NO_PAD.encode(fields.to_string()));
        for alg in ["none", "None", "HS256", "HS512"] {
            assert_eq!(
                header(&token(json!({"alg": alg, "typ": "JWT"}))),
                Err(refused(format!("token algorithm `{alg}` is not accepted")))
            );
        }
        assert_eq!(
            header(&token(json!({"alg": "ES256", "kid": "k1"}))),
            Ok((Algorithm::ES256, Some("k1".to_owned())))
        );
        assert_eq!(
            header("not-base64!.e30."),
            Err(refused("token is not a well-formed JWT"))
        );
    }
}
