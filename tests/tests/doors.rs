//! What a browser may do with the API: cross-origin calls only from the front-ends an operator
//! names, and a dashboard that runs only its own code, in no one else's frame.

use reqwest::Method;
use taskfleet_tests::TestEnv;

const FRONT_END: &str = "https://app.example.com";

async fn preflight(api: &taskfleet_tests::Api, origin: &str) -> reqwest::Response {
    api.http
        .request(Method::OPTIONS, api.url("/v1/jobs"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn cross_origin_calls_are_off_until_an_operator_names_a_front_end() {
    let mut env = TestEnv::new().await;
    let closed = env.start_api(&[]).await;
    let resp = preflight(&closed, FRONT_END).await;
    assert!(
        resp.headers().get("access-control-allow-origin").is_none(),
        "{resp:?}"
    );

    let open = env
        .start_api(&[(
            "TASKFLEET_CORS_ORIGINS",
            "https://app.example.com, http://localhost:5173",
        )])
        .await;
    let resp = preflight(&open, FRONT_END).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers();
    assert_eq!(headers["access-control-allow-origin"], FRONT_END);
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");

    // An answer, even a refusal, reaches the front-end with what it needs to read it.
    let key = env.create_key("acme");
    let answer = open
        .http
        .get(open.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("origin", FRONT_END)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["access-control-allow-origin"], FRONT_END);
    let exposed = answer.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("ratelimit-remaining") && exposed.contains("retry-after"),
        "{exposed}"
    );
    let refused = open
        .http
        .get(open.url("/v1/jobs"))
        .header("origin", FRONT_END)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], FRONT_END);

    // Any other origin gets no CORS answer, so the browser keeps the response from the page.
    let resp = preflight(&open, "https://evil.example").await;
    assert!(
        resp.headers().get("access-control-allow-origin").is_none(),
        "{resp:?}"
    );

    // A list that names something other than an origin stops the API at start.
    let out = env.api_command_env(
        &["serve"],
        &[("TASKFLEET_CORS_ORIGINS", "https://app.example.com/path")],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not an origin"),
        "{out:?}"
    );
    env.finish().await;
}

#[tokio::test]
async fn the_dashboard_runs_only_its_own_files_and_in_no_frame() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let page = api.http.get(api.url("/dashboard")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    // Scripts come from files: no inline script, no inline handlers, no inline styles.
    assert!(!html.contains("<script>") && !html.contains(" onclick=") && !html.contains(" style="));
    env.finish().await;
}
