//! JWT bearer tokens from an identity provider, beside API keys. The tests are the provider:
//! they make Ed25519 keys, sign tokens by hand (not with the library the API verifies with)
//! and publish the keys as a JWKS file, or serve it over HTTP to show a rotated key is
//! fetched when a token first names it.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    hmac,
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair},
};
use serde_json::Value;
use taskfleet_tests::{Api, TestEnv, free_port, json};
use uuid::Uuid;

const ISSUER: &str = "https://idp.example.test/";
const AUDIENCE: &str = "taskfleet";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.claims.signature`, the signature made by `sign` over the first two parts.
fn token(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = sign(message.as_bytes());
    format!("{message}.{}", b64(signature))
}

/// One of the provider's signing keys.
struct ProviderKey {
    kid: &'static str,
    pair: Ed25519KeyPair,
}

impl ProviderKey {
    fn new(kid: &'static str) -> ProviderKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        ProviderKey {
            kid,
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
               "x": b64(self.pair.public_key())})
    }

    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid});
        token(&header, claims, |message| {
            self.pair.sign(message).as_ref().to_vec()
        })
    }
}

fn jwks(keys: &[&ProviderKey]) -> Value {
    json!({"keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>()})
}

fn jwks_file(set: &Value) -> String {
    let path = std::env::temp_dir().join(format!("tf-jwks-{}.json", Uuid::new_v4().simple()));
    std::fs::write(&path, set.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// What the provider asserts: `tenant` may act with `scope`, for ten minutes from now.
fn claims(tenant: &str, scope: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "someone@example.test", "tenant": tenant,
           "scope": scope, "iat": now, "exp": now + 600})
}

fn trusting(jwks: &str) -> [(&'static str, &str); 4] {
    [
        ("TASKFLEET_JWT_ISSUER", ISSUER),
        ("TASKFLEET_JWT_AUDIENCE", AUDIENCE),
        ("TASKFLEET_JWT_JWKS", jwks),
        ("TASKFLEET_API_KEY_CACHE_SECS", "0"),
    ]
}

/// `GET /v1/me` with `token` is refused with `status`, for a reason that says `why`.
async fn assert_refused(api: &Api, token: &str, status: u16, why: &str) {
    let (got, body) = api.get(token, "/v1/me").await;
    assert_eq!(got, status, "expected a refusal for `{why}`: {body}");
    let error = if status == 401 {
        "unauthorized"
    } else {
        "forbidden"
    };
    assert_eq!(body["error"], error, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(why), "`{message}` does not say `{why}`");
}

#[tokio::test]
async fn a_tokens_scope_decides_what_it_may_do_in_its_tenant_and_api_keys_still_work() {
    let mut env = TestEnv::new().await;
    let acme_key = env.create_key("acme");
    let provider = ProviderKey::new("k1");
    let file = jwks_file(&jwks(&[&provider]));
    let mut settings = trusting(&file).to_vec();
    settings.push(("TASKFLEET_READY_TIMEOUT_MS", "300"));
    let api = env.start_api(&settings).await;
    let submit = provider.sign(&claims("acme", json!("openid submit")));
    let read = provider.sign(&claims("acme", json!("read profile")));
    let operator = provider.sign(&claims("acme", json!(["openid", "operator"])));

    let (status, me) = api.get(&submit, "/v1/me").await;
    assert_eq!((status, me["tenant"].as_str()), (200, Some("acme")), "{me}");
    assert_eq!(me["role"], "tenant");
    let job = api
        .submit(&submit, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    let (status, body) = api.get(&submit, &format!("/v1/jobs/{job}")).await;
    assert_eq!(status, 200, "{body}");

    // A read token reads the tenant's jobs and changes nothing, as a read key.
    let (status, body) = api.get(&read, &format!("/v1/jobs/{job}")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post(&read, &format!("/v1/jobs/{job}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("may only read"),
        "{body}"
    );

    // Operator routes take an operator token, and no other.
    let (status, body) = api.get(&operator, "/v1/workers").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = api.get(&submit, "/v1/workers").await;
    assert_eq!(status, 403);
    // What a token changes, the audit log puts down to whom the provider issued it.
    let (status, body) = api
        .post(&operator, "/v1/queues/agent/pause", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, audit) = api.get(&operator, "/v1/audit?action=queue.paused").await;
    assert_eq!(
        audit["events"][0]["actor"], "acme (token: someone@example.test)",
        "{audit}"
    );

    // /v1/mcp takes a token as it takes a key: its task tools act for the token's tenant.
    let list_tasks = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                            "params": {"name": "list_tasks", "arguments": {"status": "all"}}});
    let response = api
        .http
        .post(api.url("/v1/mcp"))
        .bearer_auth(&submit)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&list_tasks)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["result"]["structuredContent"]["total"], 0, "{reply}");

    // /readyz authenticates its caller through the same path: no worker runs, and only the
    // operator token learns why the round trip failed.
    let (_, body) = api.get(&submit, "/readyz").await;
    assert_eq!(body["checks"]["queue_round_trip"], "failed", "{body}");
    let (_, body) = api.get(&operator, "/readyz").await;
    let why = body["checks"]["queue_round_trip"].as_str().unwrap();
    assert!(why.contains("no worker finished"), "{body}");

    // The tenant's API key works beside the tokens, and sees what they did.
    let (status, body) = api.get(&acme_key, &format!("/v1/jobs/{job}")).await;
    assert_eq!(status, 200, "{body}");
    env.finish().await;
}

#[tokio::test]
async fn tokens_the_api_cannot_trust_are_refused_with_why() {
    let mut env = TestEnv::new().await;
    env.create_key("acme");
    let provider = ProviderKey::new("k1");
    let api = env
        .start_api(&trusting(&jwks_file(&jwks(&[&provider]))))
        .await;
    let now = chrono::Utc::now().timestamp();
    let good = claims("acme", json!("submit"));
    let with = |changes: Value| {
        let mut claims = good.clone();
        for (name, value) in changes.as_object().unwrap() {
            match value {
                Value::Null => claims.as_object_mut().unwrap().remove(name),
                value => claims
                    .as_object_mut()
                    .unwrap()
                    .insert(name.clone(), value.clone()),
            };
        }
        claims
    };
    let (status, _) = api.get(&provider.sign(&good), "/v1/me").await;
    assert_eq!(status, 200, "the untouched token is good");

    // Past the 30 s of leeway for clocks that disagree.
    let expired = provider.sign(&with(json!({"exp": now - 60})));
    assert_refused(&api, &expired, 401, "token expired").await;
    let early = provider.sign(&with(json!({"nbf": now + 600})));
    assert_refused(&api, &early, 401, "not valid yet").await;
    let endless = provider.sign(&with(json!({"exp": null})));
    assert_refused(&api, &endless, 401, "no `exp` claim").await;
    let elsewhere = provider.sign(&with(json!({"aud": "another-api"})));
    assert_refused(&api, &elsewhere, 401, "audience is not taskfleet's").await;
    let foreign = provider.sign(&with(json!({"iss": "https://evil.example.test/"})));
    assert_refused(&api, &foreign, 401, "issuer").await;

    // The same kid, another key.
    let forged = ProviderKey::new("k1").sign(&good);
    assert_refused(&api, &forged, 401, "signature is not valid").await;
    let unknown_key = ProviderKey::new("k9").sign(&good);
    assert_refused(
        &api,
        &unknown_key,
        401,
        "not among the identity provider's keys",
    )
    .await;
    let mut tampered = provider.sign(&good);
    tampered.truncate(tampered.len() - 4);
    tampered.push_str("AAAA");
    assert_refused(&api, &tampered, 401, "signature is not valid").await;

    // No signature at all.
    let unsigned = token(&json!({"alg": "none", "typ": "JWT"}), &good, |_| Vec::new());
    assert!(unsigned.ends_with('.'));
    assert_refused(&api, &unsigned, 401, "algorithm `none` is not accepted").await;
    // Algorithm confusion: an HMAC keyed with the provider's public key, which anyone has.
    let public = hmac::Key::new(hmac::HMAC_SHA256, provider.pair.public_key().as_ref());
    let confused = token(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}),
        &good,
        |message| hmac::sign(&public, message).as_ref().to_vec(),
    );
    assert_refused(&api, &confused, 401, "algorithm `HS256` is not accepted").await;

    // Good tokens that name no tenant here, or no scope of taskfleet's.
    let stranger = provider.sign(&with(json!({"tenant": "globex"})));
    assert_refused(&api, &stranger, 401, "tenant `globex` is not known here").await;
    let tenantless = provider.sign(&with(json!({"tenant": null})));
    assert_refused(&api, &tenantless, 401, "no `tenant` claim").await;
    let scopeless = provider.sign(&with(json!({"scope": "openid email"})));
    assert_refused(&api, &scopeless, 403, "carries no taskfleet scope").await;

    // Nothing about the keys is given away.
    let (_, body) = api.get(&forged, "/v1/me").await;
    assert!(!body.to_string().contains(&b64(provider.pair.public_key())));
    env.finish().await;
}

#[tokio::test]
async fn tenant_and_scope_come_from_the_claims_the_operator_names() {
    let mut env = TestEnv::new().await;
    env.create_key("acme");
    let provider = ProviderKey::new("k1");
    let file = jwks_file(&jwks(&[&provider]));
    let mut settings = trusting(&file).to_vec();
    settings.push(("TASKFLEET_JWT_TENANT_CLAIM", "org"));
    settings.push(("TASKFLEET_JWT_SCOPE_CLAIM", "roles"));
    let api = env.start_api(&settings).await;
    let mut named = claims("globex", json!("openid"));
    named["org"] = json!("acme");
    named["roles"] = json!(["read"]);
    let (status, me) = api.get(&provider.sign(&named), "/v1/me").await;
    assert_eq!(
        (status, &me["tenant"], &me["role"]),
        (200, &json!("acme"), &json!("read"))
    );
    env.finish().await;
}

#[tokio::test]
async fn a_half_configured_provider_or_an_unusable_key_set_stops_the_start() {
    let env = TestEnv::new().await;
    let provider = ProviderKey::new("k1");
    let file = jwks_file(&jwks(&[&provider]));
    let secret_only = jwks_file(&json!({"keys": [{"kty": "oct", "k": b64("secret")}]}));
    let nobody = format!("http://127.0.0.1:{}/jwks.json", free_port());
    for (settings, why) in [
        (
            vec![
                ("TASKFLEET_JWT_ISSUER", ISSUER),
                ("TASKFLEET_JWT_JWKS", &*file),
            ],
            "TASKFLEET_JWT_AUDIENCE not set",
        ),
        (
            vec![("TASKFLEET_JWT_AUDIENCE", AUDIENCE)],
            "TASKFLEET_JWT_ISSUER and TASKFLEET_JWT_JWKS not set",
        ),
        (
            trusting(&secret_only).to_vec(),
            "no signing key taskfleet accepts",
        ),
        (trusting(&nobody).to_vec(), "cannot fetch"),
        (
            trusting("http://idp.example.test/jwks.json").to_vec(),
            "must come over https",
        ),
        (trusting("/nonexistent/jwks.json").to_vec(), "cannot read"),
    ] {
        let out = env.api_command_env(&["serve"], &settings);
        let logs = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {settings:?}");
        assert!(logs.contains(why), "{settings:?}: {logs}");
    }
    env.finish().await;
}

/// A JWKS served over HTTP, counting its fetches.
struct ServedJwks {
    url: String,
    set: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl ServedJwks {
    async fn start(set: Value) -> ServedJwks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
        let (set, fetches) = (Arc::new(Mutex::new(set)), Arc::new(AtomicUsize::new(0)));
        let endpoint = poem::endpoint::make_sync({
            let (set, fetches) = (set.clone(), fetches.clone());
            move |_| {
                fetches.fetch_add(1, Ordering::SeqCst);
                poem::web::Json(set.lock().unwrap().clone())
            }
        });
        let app = poem::Route::new().at("/jwks.json", endpoint);
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
        });
        ServedJwks {
            url,
            set,
            fetches,
            server,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for ServedJwks {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test]
async fn a_jwks_url_is_fetched_at_start_and_again_when_a_token_names_a_new_key() {
    let mut env = TestEnv::new().await;
    env.create_key("acme");
    let (old, new) = (ProviderKey::new("old"), ProviderKey::new("new"));
    let served = ServedJwks::start(jwks(&[&old])).await;
    let api = env.start_api(&trusting(&served.url)).await;
    let good = claims("acme", json!("submit"));
    assert_eq!(served.fetches(), 1, "fetched once, at start");
    let (status, body) = api.get(&old.sign(&good), "/v1/me").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served.fetches(), 1, "a known key needs no fetch");

    // The provider rotates: the first token signed with the new key brings the new set.
    *served.set.lock().unwrap() = jwks(&[&new]);
    let (status, body) = api.get(&new.sign(&good), "/v1/me").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served.fetches(), 2);
    assert_refused(&api, &old.sign(&good), 401, "not among").await;

    // Made-up key ids fetch nothing more within the minute.
    for kid in ["made-up-1", "made-up-2", "made-up-3"] {
        let made_up = ProviderKey::new(kid).sign(&good);
        assert_refused(&api, &made_up, 401, "not among").await;
    }
    assert_eq!(served.fetches(), 2);
    env.finish().await;
}
