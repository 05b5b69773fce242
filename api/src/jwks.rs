//! The identity provider's signing keys (its JWKS), which JWT bearer tokens are checked
//! against (ADR 0016).
//!
//! A file is read once, at start: new keys there need a restart. A URL is fetched at start
//! and again every ten minutes, and also as soon as a token names a key (`kid`) the set does
//! not hold, since that is how a provider's key rotation first shows; such fetches happen at
//! most once a minute, so tokens with made-up `kid`s cannot make the API hammer the provider.
//! A fetch that fails keeps the keys already held.
//!
//! Only asymmetric keys are kept: RSA, EC P-256 and P-384, Ed25519. A shared secret (`oct`)
//! in a published set would let anyone who read it mint tokens, and a key usable with an
//! HMAC algorithm is how algorithm-confusion attacks work; keys meant for encryption and
//! keys of other types are skipped, not fatal, as providers publish those beside their
//! signing keys.

use std::{
    path::PathBuf,
    str::FromStr,
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use anyhow::Context;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse},
};
use tokio::{sync::Mutex, time::Instant};

/// How often a JWKS URL is fetched again, whatever tokens come.
const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// The least time between two fetches for tokens naming a key the set does not hold.
const UNKNOWN_KEY_FETCH_GAP: Duration = Duration::from_secs(60);
/// How long a fetch may take; a token that made it waits as long at most.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The algorithms a key of each type may verify: never `none`, never an HMAC.
const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One of the provider's signing keys.
pub struct SigningKey {
    pub kid: Option<String>,
    /// What a token signed with this key may name as its `alg`: the key's own `alg` when the
    /// set declares one, else every algorithm of its type.
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// The signing keys held, and where they come from.
pub struct Jwks {
    source: Source,
    keys: RwLock<Vec<Arc<SigningKey>>>,
    /// When a token naming an unknown key last made this fetch the set; held during that
    /// fetch, so tokens arriving meanwhile wait for its keys instead of fetching again.
    fetched_for_unknown_key: Mutex<Option<Instant>>,
}

enum Source {
    File(PathBuf),
    Url { url: String, http: reqwest::Client },
}

impl Jwks {
    /// Reads (a path) or fetches (an `http://` or `https://` URL) the set at `location`; a
    /// URL's set is then refreshed in the background. Fails when the set cannot be had or
    /// holds no key taskfleet can use.
    pub async fn load(location: &str) -> anyhow::Result<Arc<Jwks>> {
        let source = match location.starts_with("https://") || location.starts_with("http://") {
            true => {
                let https = location.starts_with("https://");
                // Keys that sign operator tokens must not come over a network anyone on the
                // path can answer: plain HTTP only from this machine, and no redirects.
                if !https && !is_loopback(location) {
                    anyhow::bail!(
                        "TASKFLEET_JWT_JWKS: {location} is plain http; an identity provider's \
                         keys must come over https (http only from a loopback address)"
                    );
                }
                Source::Url {
                    url: location.to_owned(),
                    http: reqwest::Client::builder()
                        .timeout(FETCH_TIMEOUT)
                        .https_only(https)
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .context("cannot build the HTTP client for the JWKS")?,
                }
            }
            false => Source::File(location.into()),
        };
        let keys = source
            .read()
            .await
            .with_context(|| format!("TASKFLEET_JWT_JWKS: no usable key set at {location}"))?;
        let jwks = Arc::new(Jwks {
            source,
            keys: RwLock::new(keys),
            fetched_for_unknown_key: Mutex::new(None),
        });
        if matches!(jwks.source, Source::Url { .. }) {
            refresh_while_used(Arc::downgrade(&jwks));
        }
        Ok(jwks)
    }

    /// The key `kid` names, fetching the set again (see the module's doc) when it is not
    /// held; without a `kid`, the set's only key.
    pub async fn key(&self, kid: Option<&str>) -> Option<Arc<SigningKey>> {
        if let Some(key) = self.held(kid) {
            return Some(key);
        }
        if kid.is_none() || matches!(self.source, Source::File(_)) {
            return None;
        }
        let mut fetched = self.fetched_for_unknown_key.lock().await;
        // The fetch of a token that held the lock before this one may have brought the key.
        if let Some(key) = self.held(kid) {
            return Some(key);
        }
        if fetched.is_some_and(|at| at.elapsed() < UNKNOWN_KEY_FETCH_GAP) {
            return None;
        }
        *fetched = Some(Instant::now());
        self.refresh().await;
        self.held(kid)
    }

    fn held(&self, kid: Option<&str>) -> Option<Arc<SigningKey>> {
        let keys = self.keys.read().expect("JWKS lock");
        let found = match (kid, keys.as_slice()) {
            (Some(kid), keys) => keys.iter().find(|key| key.kid.as_deref() == Some(kid)),
            (None, [only]) => Some(only),
            (None, _) => None,
        };
        found.cloned()
    }

    async fn refresh(&self) {
        match self.source.read().await {
            Ok(keys) => *self.keys.write().expect("JWKS lock") = keys,
            Err(err) => {
                tracing::warn!("could not refresh the JWKS; keeping the keys held: {err:#}")
            }
        }
    }
}

/// Fetches the set again every [`REFRESH_EVERY`] until the last handle on it is dropped.
fn refresh_while_used(jwks: Weak<Jwks>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            let Some(jwks) = jwks.upgrade() else { return };
            jwks.refresh().await;
        }
    });
}

impl Source {
    async fn read(&self) -> anyhow::Result<Vec<Arc<SigningKey>>> {
        let json = match self {
            Source::File(path) => tokio::fs::read(path)
                .await
                .with_context(|| format!("cannot read {}", path.display()))?,
            Source::Url { url, http } => http
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("cannot fetch {url}"))?
                .bytes()
                .await
                .with_context(|| format!("cannot fetch {url}"))?
                .to_vec(),
        };
        signing_keys(&json)
    }
}

/// Whether `location`'s host is this machine.
fn is_loopback(location: &str) -> bool {
    match url::Url::parse(location)
        .ok()
        .and_then(|url| url.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

/// The usable keys of a JWKS document; an error when there is none.
fn signing_keys(json: &[u8]) -> anyhow::Result<Vec<Arc<SigningKey>>> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set =
        serde_json::from_slice(json).context("not a JWKS (a JSON object with `keys`)")?;
    let keys: Vec<_> = set
        .keys
        .into_iter()
        // A key of a type this library does not parse is skipped like one it refuses.
        .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
        .filter_map(|jwk| signing_key(&jwk))
        .map(Arc::new)
        .collect();
    anyhow::ensure!(
        !keys.is_empty(),
        "the JWKS holds no signing key taskfleet accepts (RSA, EC P-256 or P-384, Ed25519)"
    );
    Ok(keys)
}

fn signing_key(jwk: &Jwk) -> Option<SigningKey> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|used| *used != PublicKeyUse::Signature)
    {
        return None;
    }
    let of_its_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA_ALGORITHMS,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        _ => return None,
    };
    let algorithms = match &jwk.common.key_algorithm {
        None => of_its_type.to_vec(),
        // A declared algorithm of another type (an HMAC on an RSA key) leaves the key unused.
        Some(declared) => {
            let declared = Algorithm::from_str(&declared.to_string()).ok()?;
            of_its_type.contains(&declared).then(|| vec![declared])?
        }
    };
    Some(SigningKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    #[test]
    fn only_asymmetric_signing_keys_are_kept_each_with_the_algorithms_it_may_verify() {
        // Parsed, never used to verify: any 256 bytes do for a modulus, any 32 for a point.
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "rs256", "alg": "RS256", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "hmac", "alg": "HS256", "n": n, "e": "AQAB"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": x},
            {"kty": "unknown", "kid": "future"},
        ]});
        let keys = signing_keys(set.to_string().as_bytes()).unwrap();
        let kept: Vec<_> = keys
            .iter()
            .map(|key| (key.kid.as_deref().unwrap(), key.algorithms.clone()))
            .collect();
        assert_eq!(
            kept,
            [
                ("rsa", RSA_ALGORITHMS.to_vec()),
                ("rs256", vec![Algorithm::RS256]),
                ("ed", vec![Algorithm::EdDSA]),
            ]
        );
    }

    #[test]
    fn a_set_without_a_usable_key_is_an_error() {
        let secret_only = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#;
        let Err(err) = signing_keys(secret_only.as_bytes()) else {
            panic!("a shared secret is no signing key")
        };
        assert!(err.to_string().contains("no signing key"), "{err}");
        assert!(signing_keys(b"[]").is_err());
    }
}
