//! What the three fake authorization servers (GitHub, Atlassian, Google) remember: the one
//! registered client, authorization codes, the access and refresh tokens they issued, and the
//! personal tokens a test registers. The provider modules only put it into their own words.
//!
//! Codes are single use, bound to the client and `redirect_uri`, valid 10 minutes, and bound to
//! a PKCE challenge when the authorization request carried one. Tokens do not expire by time
//! (tests are short): a test ends them with `expire_access_tokens` / `revoke_refresh_tokens`.

use std::collections::{HashMap, HashSet};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use rand::{Rng, distr::Alphanumeric};
use sha2::{Digest, Sha256};

use poem::{Request, Response};

use super::{FakeProvider, lock, params::Params, reply};

pub(crate) const CLIENT_ID: &str = "taskfleet-fake-client";
pub(crate) const CLIENT_SECRET: &str = "taskfleet-fake-secret";

/// The authorization server a token belongs to: Jira and Confluence share Atlassian's, Gmail
/// and Drive share Google's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Issuer {
    Github,
    Atlassian,
    Google,
}

impl Issuer {
    pub fn of(provider: FakeProvider) -> Issuer {
        match provider {
            FakeProvider::Github => Issuer::Github,
            FakeProvider::Jira | FakeProvider::Confluence => Issuer::Atlassian,
            FakeProvider::Gmail | FakeProvider::Gdrive => Issuer::Google,
        }
    }
}

/// What an authorization request asks for.
pub(crate) struct Consent {
    pub client_id: String,
    pub redirect_uri: String,
    /// As requested (space-separated).
    pub scope: String,
    /// Google's `access_type=offline`: a refresh token is wanted.
    pub offline: bool,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
}

/// Why an authorization request gets an error page instead of a redirect.
#[derive(Debug)]
pub(crate) enum Refusal {
    UnknownClient,
    MissingRedirectUri,
    UnsupportedChallengeMethod,
}

impl Refusal {
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::UnknownClient => "The client_id is not that of a registered application.",
            Refusal::MissingRedirectUri => "The redirect_uri is missing.",
            Refusal::UnsupportedChallengeMethod => "code_challenge_method must be S256 or plain.",
        }
    }
}

/// A token request's credentials and code.
pub(crate) struct CodeExchange<'a> {
    pub client_id: Option<&'a str>,
    pub client_secret: Option<&'a str>,
    pub code: Option<&'a str>,
    pub redirect_uri: Option<&'a str>,
    pub code_verifier: Option<&'a str>,
}

/// Why a token request is refused; each provider words it its own way.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GrantError {
    InvalidClient,
    /// Unknown, used, expired, or issued to another client or provider.
    InvalidCode,
    RedirectUriMismatch,
    /// The PKCE verifier is missing or does not hash to the challenge.
    InvalidVerifier,
    InvalidRefreshToken,
}

struct IssuedCode {
    issuer: Issuer,
    consent: Consent,
    expires_at: DateTime<Utc>,
}

struct AccessToken {
    issuer: Issuer,
    expired: bool,
}

struct RefreshToken {
    issuer: Issuer,
    scope: String,
}

#[derive(Default)]
pub(crate) struct Authorizations {
    codes: HashMap<String, IssuedCode>,
    access_tokens: HashMap<String, AccessToken>,
    refresh_tokens: HashMap<String, RefreshToken>,
    refreshes: HashMap<Issuer, usize>,
    code_exchanges: HashMap<Issuer, usize>,
    github_pats: HashSet<String>,
    /// (email, API token) pairs for Basic auth on the Atlassian site.
    atlassian_api_tokens: HashSet<(String, String)>,
    /// GitHub's token endpoint issues expiring tokens with refresh tokens (a GitHub App with
    /// "expire user authorization tokens" on) instead of an OAuth app's lasting token.
    pub github_expiring_tokens: bool,
}

/// `prefix` followed by random letters and digits, `len` characters in all.
pub(crate) fn random_token(prefix: &str, len: usize) -> String {
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len.saturating_sub(prefix.len()))
        .map(char::from)
        .collect();
    format!("{prefix}{random}")
}

impl Authorizations {
    /// Auto-approves a consent and returns the code to redirect with.
    pub fn authorize(&mut self, issuer: Issuer, consent: Consent) -> Result<String, Refusal> {
        if consent.client_id != CLIENT_ID {
            return Err(Refusal::UnknownClient);
        }
        if consent.redirect_uri.is_empty() {
            return Err(Refusal::MissingRedirectUri);
        }
        if consent.code_challenge.is_some()
            && !matches!(
                consent.code_challenge_method.as_deref(),
                None | Some("S256" | "plain")
            )
        {
            return Err(Refusal::UnsupportedChallengeMethod);
        }
        let code = random_token("", 20);
        self.codes.insert(
            code.clone(),
            IssuedCode {
                issuer,
                consent,
                expires_at: Utc::now() + Duration::minutes(10),
            },
        );
        Ok(code)
    }

    pub fn client_is_registered(client_id: Option<&str>, client_secret: Option<&str>) -> bool {
        client_id == Some(CLIENT_ID) && client_secret == Some(CLIENT_SECRET)
    }

    /// Checks an authorization-code grant and uses the code up; returns what was consented to.
    pub fn redeem_code(
        &mut self,
        issuer: Issuer,
        exchange: CodeExchange,
    ) -> Result<Consent, GrantError> {
        if !Self::client_is_registered(exchange.client_id, exchange.client_secret) {
            return Err(GrantError::InvalidClient);
        }
        // A code is spent by any attempt to use it, as the real servers do.
        let issued = exchange
            .code
            .and_then(|code| self.codes.remove(code))
            .filter(|issued| issued.issuer == issuer && issued.expires_at > Utc::now())
            .ok_or(GrantError::InvalidCode)?;
        if exchange
            .redirect_uri
            .is_some_and(|uri| uri != issued.consent.redirect_uri)
        {
            return Err(GrantError::RedirectUriMismatch);
        }
        if let Some(challenge) = &issued.consent.code_challenge {
            let verifier = exchange.code_verifier.ok_or(GrantError::InvalidVerifier)?;
            let derived = match issued.consent.code_challenge_method.as_deref() {
                Some("S256") => URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
                _ => verifier.to_owned(),
            };
            if &derived != challenge {
                return Err(GrantError::InvalidVerifier);
            }
        }
        *self.code_exchanges.entry(issuer).or_default() += 1;
        Ok(issued.consent)
    }

    /// Checks a refresh-token grant; with `rotate` the token is used up (a new one must be
    /// issued with the access token). Returns the scope the token was granted.
    pub fn redeem_refresh_token(
        &mut self,
        issuer: Issuer,
        client_id: Option<&str>,
        client_secret: Option<&str>,
        refresh_token: Option<&str>,
        rotate: bool,
    ) -> Result<String, GrantError> {
        if !Self::client_is_registered(client_id, client_secret) {
            return Err(GrantError::InvalidClient);
        }
        let token = refresh_token.ok_or(GrantError::InvalidRefreshToken)?;
        let scope = match self.refresh_tokens.get(token) {
            Some(known) if known.issuer == issuer => known.scope.clone(),
            _ => return Err(GrantError::InvalidRefreshToken),
        };
        if rotate {
            self.refresh_tokens.remove(token);
        }
        *self.refreshes.entry(issuer).or_default() += 1;
        Ok(scope)
    }

    /// Remembers tokens the provider made for a grant of `scope`.
    pub fn keep(
        &mut self,
        issuer: Issuer,
        access_token: &str,
        refresh_token: Option<&str>,
        scope: &str,
    ) {
        self.access_tokens.insert(
            access_token.to_owned(),
            AccessToken {
                issuer,
                expired: false,
            },
        );
        if let Some(refresh_token) = refresh_token {
            self.refresh_tokens.insert(
                refresh_token.to_owned(),
                RefreshToken {
                    issuer,
                    scope: scope.to_owned(),
                },
            );
        }
    }

    /// True for a live access token that `issuer` issued.
    pub fn accepts(&self, issuer: Issuer, access_token: &str) -> bool {
        self.access_tokens
            .get(access_token)
            .is_some_and(|token| token.issuer == issuer && !token.expired)
    }

    pub fn accepts_github_pat(&self, token: &str) -> bool {
        self.github_pats.contains(token)
    }

    pub fn accepts_atlassian_api_token(&self, email: &str, token: &str) -> bool {
        self.atlassian_api_tokens
            .contains(&(email.to_owned(), token.to_owned()))
    }

    pub fn add_github_pat(&mut self, token: &str) {
        self.github_pats.insert(token.to_owned());
    }

    pub fn add_atlassian_api_token(&mut self, email: &str, token: &str) {
        self.atlassian_api_tokens
            .insert((email.to_owned(), token.to_owned()));
    }

    pub fn expire_access_tokens(&mut self) {
        for token in self.access_tokens.values_mut() {
            token.expired = true;
        }
    }

    pub fn revoke_refresh_tokens(&mut self) {
        self.refresh_tokens.clear();
    }

    pub fn refreshes(&self, issuer: Issuer) -> usize {
        self.refreshes.get(&issuer).copied().unwrap_or(0)
    }

    pub fn code_exchanges(&self, issuer: Issuer) -> usize {
        self.code_exchanges.get(&issuer).copied().unwrap_or(0)
    }
}

/// The authorization endpoint of every provider: approves at once, as a user who always
/// clicks "Authorize" would, and redirects back with `code` and `state` (and the scope when
/// `echo_scope`, as Google does); an error page when the request cannot be trusted.
pub(crate) fn approve(req: &Request, issuer: Issuer, echo_scope: bool) -> Response {
    let params = Params::query(req);
    let text = |name: &str| params.get(name).unwrap_or_default().to_owned();
    let consent = Consent {
        client_id: text("client_id"),
        redirect_uri: text("redirect_uri"),
        scope: text("scope"),
        offline: params.get("access_type") == Some("offline"),
        code_challenge: params.get("code_challenge").map(str::to_owned),
        code_challenge_method: params.get("code_challenge_method").map(str::to_owned),
    };
    let redirect_uri = consent.redirect_uri.clone();
    let code = match lock(req).auth.authorize(issuer, consent) {
        Ok(code) => code,
        Err(refusal) => return reply::error_page(400, refusal.message()),
    };
    let mut pairs = vec![("code", code.as_str())];
    if let Some(state) = params.get("state") {
        pairs.push(("state", state));
    }
    if echo_scope {
        pairs.push(("scope", params.get("scope").unwrap_or_default()));
    }
    reply::redirect(&redirect_uri, &pairs)
}
