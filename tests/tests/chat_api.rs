//! The chat assistant's API, against the real binaries, Redis and Postgres, with the fake
//! OpenAI as the LLM: a tenant's own provider (`/v1/llm`: set, read without its key, test,
//! forget), the checks an `agent.chat` job meets before it is accepted (its conversation, an
//! LLM to answer, the month's budget), budgets and usage, `POST /v1/chat` and the
//! conversations it keeps.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use taskfleet_tests::{
    Api, TestEnv,
    fake_providers::{FakeProviders, FaultRule, OPENAI_API_KEY},
    free_port, json,
};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(60);
const MODEL: &str = "gpt-4o-mini";
const COMPLETIONS: &str = "/openai/v1/chat/completions";

/// The fakes, an API (and a worker on the agent queue when `worker`), all with the fakes'
/// environment and, when `fleet_llm`, the fake model as the fleet's LLM; a key of tenant
/// `acme`.
struct ChatFleet {
    env: TestEnv,
    api: Api,
    fake: FakeProviders,
    acme: String,
}

impl ChatFleet {
    async fn start(fleet_llm: bool, worker: bool) -> ChatFleet {
        let mut env = TestEnv::new().await;
        let fake = FakeProviders::start().await;
        let vars = match fleet_llm {
            true => fake.env_with_llm(MODEL),
            false => fake.env(),
        };
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let api = env.start_api(&pairs).await;
        if worker {
            env.start_worker_env(&["--queues", "agent"], &pairs);
        }
        let acme = env.create_key("acme");
        ChatFleet {
            env,
            api,
            fake,
            acme,
        }
    }
}

/// A request with extra headers; the status, the headers and the JSON answer.
async fn send(
    api: &Api,
    method: reqwest::Method,
    key: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = api.http.request(method, api.url(path)).bearer_auth(key);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request sent");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn put(api: &Api, key: &str, path: &str, body: &Value) -> (u16, Value) {
    api.call(reqwest::Method::PUT, key, path, Some(body)).await
}

fn chat_job(message: &str, conversation: Option<&str>) -> Value {
    let mut job = json!({"kind": "agent.chat", "message": message});
    if let Some(conversation) = conversation {
        job["conversation_id"] = json!(conversation);
    }
    job
}

#[tokio::test]
async fn a_tenants_own_provider_is_set_tested_and_forgotten_without_its_key_showing() {
    let fleet = ChatFleet::start(false, false).await;
    let (api, acme) = (&fleet.api, fleet.acme.as_str());
    let globex = fleet.env.create_key("globex");
    let mut answers = Vec::new();

    // Nothing to chat with yet: neither the tenant nor the fleet has an LLM.
    let (status, body) = api.get(acme, "/v1/llm").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("fleet has none"),
        "{body}"
    );
    let (status, body) = api.post(acme, "/v1/jobs", &chat_job("Hello", None)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("llm_not_configured")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("PUT /v1/llm"), "{message}");
    assert!(message.contains("TASKFLEET_LLM_BASE_URL"), "{message}");
    let (status, body) = api
        .post(acme, "/v1/chat", &json!({"message": "Hello"}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("llm_not_configured")),
        "{body}"
    );
    let (status, body) = api.post(acme, "/v1/llm/test", &json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("llm_not_configured")),
        "{body}"
    );

    // Malformed providers are refused.
    for bad in [
        json!({"base_url": "ftp://llm.example/v1", "model": MODEL}),
        json!({"base_url": "not a url", "model": MODEL}),
        json!({"base_url": "https://user:pw@llm.example/v1", "model": MODEL}),
        json!({"base_url": fleet.fake.openai_base_url(), "model": ""}),
        json!({"base_url": fleet.fake.openai_base_url(), "model": MODEL, "api_key": "sk-\u{1}"}),
    ] {
        let (status, body) = put(api, acme, "/v1/llm", &bad).await;
        assert_eq!(status, 422, "{bad} -> {body}");
    }

    // Set: the answer tells whether a key is stored, never the key.
    let provider = json!({
        "base_url": format!("{}/", fleet.fake.openai_base_url()),
        "model": MODEL,
        "api_key": OPENAI_API_KEY,
    });
    let (status, set) = put(api, acme, "/v1/llm", &provider).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        set["base_url"],
        fleet.fake.openai_base_url(),
        "trailing slash trimmed"
    );
    assert_eq!(
        (set["model"].as_str(), set["has_key"].as_bool()),
        (Some(MODEL), Some(true))
    );
    answers.push(set.clone());
    let (status, got) = api.get(acme, "/v1/llm").await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, set);
    answers.push(got);
    let stored: String = sqlx::query_scalar("SELECT api_key FROM llm_providers")
        .fetch_one(&fleet.env.pool)
        .await
        .unwrap();
    assert!(!stored.contains(OPENAI_API_KEY), "the key is stored sealed");
    let (status, body) = api.get(&globex, "/v1/llm").await;
    assert_eq!(status, 404, "another tenant does not see it: {body}");

    // The test call answers, and its tokens count as `test`.
    let (status, test) = api.post(acme, "/v1/llm/test", &json!({})).await;
    assert_eq!(status, 200, "{test}");
    assert_eq!(test["ok"], true, "{test}");
    assert_eq!(
        (test["provider"].as_str(), test["model"].as_str()),
        (Some("tenant"), Some(MODEL))
    );
    assert!(test["latency_ms"].is_u64(), "{test}");
    assert!(test.get("message").is_none(), "{test}");
    let sent = fleet.fake.chat_requests();
    let ping = sent.last().expect("the fake was called");
    assert_eq!(ping["max_tokens"], 1, "{ping}");
    assert_eq!(ping["model"], MODEL, "{ping}");
    let (status, usage) = api.get(acme, "/v1/usage").await;
    assert_eq!(status, 200, "{usage}");
    let tests: Vec<&Value> = usage["by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["kind"] == "test")
        .collect();
    assert_eq!(tests.len(), 1, "{usage}");
    assert_eq!(
        (tests[0]["calls"].as_i64(), tests[0]["model"].as_str()),
        (Some(1), Some(MODEL))
    );
    assert!(usage["budget"]["used"].as_i64().unwrap() > 0, "{usage}");
    assert!(
        usage["budget"]["limit"].is_null(),
        "no budget applies: {usage}"
    );

    // A chat is accepted now that the tenant has a provider.
    let (status, body) = api.post(acme, "/v1/jobs", &chat_job("Hello", None)).await;
    assert_eq!(status, 201, "{body}");

    // The provider's refusals, in words.
    fleet
        .fake
        .fail_next(FaultRule::openai_server_error(COMPLETIONS, 503, 1));
    let (_, test) = api.post(acme, "/v1/llm/test", &json!({})).await;
    assert_eq!(
        (test["ok"].as_bool(), test["status"].as_u64()),
        (Some(false), Some(503)),
        "{test}"
    );
    assert!(
        test["message"]
            .as_str()
            .unwrap()
            .starts_with("the LLM provider is unavailable: HTTP 503: "),
        "{test}"
    );
    fleet
        .fake
        .fail_next(FaultRule::openai_rate_limited(COMPLETIONS, 7, 1));
    let (_, test) = api.post(acme, "/v1/llm/test", &json!({})).await;
    assert_eq!(test["status"], 429, "{test}");
    assert!(
        test["message"]
            .as_str()
            .unwrap()
            .starts_with("the LLM provider is rate limiting: "),
        "{test}"
    );

    let wrong = "sk-wrong-key-that-must-stay-secret-0123456789";
    let (status, set) = put(
        api,
        acme,
        "/v1/llm",
        &json!({"base_url": fleet.fake.openai_base_url(), "model": MODEL, "api_key": wrong}),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    answers.push(set);
    let (_, test) = api.post(acme, "/v1/llm/test", &json!({})).await;
    assert_eq!(
        (test["ok"].as_bool(), test["status"].as_u64()),
        (Some(false), Some(401)),
        "{test}"
    );
    assert!(
        test["message"]
            .as_str()
            .unwrap()
            .contains("rejected the API key"),
        "{test}"
    );
    answers.push(test);

    let nobody = format!("http://127.0.0.1:{}/v1", free_port());
    let (status, set) = put(
        api,
        acme,
        "/v1/llm",
        &json!({"base_url": nobody, "model": MODEL}),
    )
    .await;
    assert_eq!(
        (status, set["has_key"].as_bool()),
        (200, Some(false)),
        "{set}"
    );
    let (_, test) = api.post(acme, "/v1/llm/test", &json!({})).await;
    assert_eq!(test["ok"], false, "{test}");
    assert!(test.get("status").is_none(), "{test}");
    assert!(
        test["message"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{test}"
    );

    // Forgotten: chats are refused again.
    let (status, _) = api.delete(&globex, "/v1/llm").await;
    assert_eq!(status, 404);
    let (status, _) = api.delete(acme, "/v1/llm").await;
    assert_eq!(status, 204);
    let (status, _) = api.delete(acme, "/v1/llm").await;
    assert_eq!(status, 404);
    let (status, body) = api.post(acme, "/v1/jobs", &chat_job("Hello", None)).await;
    assert_eq!(status, 422, "{body}");

    let shown = Value::from(answers).to_string();
    assert!(
        !shown.contains(OPENAI_API_KEY) && !shown.contains(wrong),
        "{shown}"
    );
    fleet.env.finish().await;
}

#[tokio::test]
async fn chat_jobs_are_checked_before_they_are_accepted() {
    let fleet = ChatFleet::start(true, false).await;
    let (api, acme) = (&fleet.api, fleet.acme.as_str());
    let globex = fleet.env.create_key("globex");
    let operator = fleet.env.create_operator_key("ops");

    // Messages of 1 to 10,000 characters.
    for message in [String::new(), " \n ".to_owned(), "é".repeat(10_001)] {
        let (status, body) = api.post(acme, "/v1/jobs", &chat_job(&message, None)).await;
        assert_eq!(status, 422, "{} chars: {body}", message.chars().count());
        let (status, body) = api
            .post(acme, "/v1/chat", &json!({"message": message}))
            .await;
        assert_eq!(status, 422, "{} chars: {body}", message.chars().count());
    }
    let (status, body) = api
        .post(acme, "/v1/jobs", &chat_job(&"é".repeat(10_000), None))
        .await;
    assert_eq!(status, 201, "{body}");

    // A conversation must be the tenant's: unknown and other tenants' ids are 404.
    let unknown = Uuid::now_v7().to_string();
    let (status, body) = api
        .post(acme, "/v1/jobs", &chat_job("Hi", Some(&unknown)))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_eq!(body["message"], format!("no conversation {unknown}"));
    let (status, body) = api
        .post(
            acme,
            "/v1/chat",
            &json!({"message": "Hi", "conversation_id": unknown}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    // Globex's first chat job starts a conversation whose id is the job's, known at once.
    let started = api.submit(&globex, chat_job("Hi", None)).await.to_string();
    let (status, body) = api
        .post(acme, "/v1/jobs", &chat_job("Hi", Some(&started)))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api
        .post(&globex, "/v1/jobs", &chat_job("And then?", Some(&started)))
        .await;
    assert_eq!(status, 201, "{body}");
    let batch = json!({"jobs": [chat_job("Hi", None), chat_job("Hi", Some(&unknown))]});
    let (status, body) = api.post(acme, "/v1/jobs/batch", &batch).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("jobs[1]: "),
        "{body}"
    );

    // The budget: operators set it; at 0 chats are refused until the month resets.
    let zero = json!({"monthly_tokens": 0});
    let (status, body) = put(api, acme, "/v1/tenants/acme/budget", &zero).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = put(api, &operator, "/v1/tenants/nobody/budget", &zero).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = put(api, &operator, "/v1/tenants/acme/budget", &json!({})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = put(
        api,
        &operator,
        "/v1/tenants/acme/budget",
        &json!({"monthly_tokens": -1}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = put(api, &operator, "/v1/tenants/acme/budget", &zero).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenant"], "acme");
    assert_eq!(
        body["budget"],
        json!({"limit": 0, "overridden": true, "used": 0, "reserved": 0, "remaining": 0,
               "exhausted": true})
    );
    let resets_at: DateTime<Utc> = body["resets_at"].as_str().unwrap().parse().unwrap();
    assert!(resets_at > Utc::now());

    for (path, chat) in [
        ("/v1/jobs", chat_job("Hello", None)),
        ("/v1/chat", json!({"message": "Hello"})),
    ] {
        let (status, headers, body) =
            send(api, reqwest::Method::POST, acme, path, Some(&chat), &[]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (429, Some("budget_exceeded")),
            "{path}: {body}"
        );
        let message = body["message"].as_str().unwrap();
        let reset = resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(message.contains(&format!("resets at {reset}")), "{message}");
        let retry_after: i64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        let until = (resets_at - Utc::now()).num_seconds();
        assert!(
            (until - 5..=until + 5).contains(&retry_after),
            "{retry_after} vs {until}"
        );
    }
    // Only acme's budget is spent.
    let (status, body) = api.post(&globex, "/v1/jobs", &chat_job("Hi", None)).await;
    assert_eq!(status, 201, "{body}");

    let (status, usage) = api.get(acme, "/v1/usage").await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["budget"]["limit"], 0, "{usage}");
    assert_eq!(usage["budget"]["remaining"], 0, "{usage}");
    assert_eq!(usage["resets_at"], json!(resets_at.to_rfc3339()), "{usage}");
    assert_eq!(usage["by_kind"], json!([]));
    let (status, usage) = api.get(&operator, "/v1/usage?tenant=acme").await;
    assert_eq!(
        (status, usage["budget"]["overridden"].as_bool()),
        (200, Some(true)),
        "{usage}"
    );
    let (status, body) = api.get(acme, "/v1/usage?tenant=globex").await;
    assert_eq!(status, 403, "{body}");

    // Back to the fleet's default (none): accepted again.
    let (status, body) = put(
        api,
        &operator,
        "/v1/tenants/acme/budget",
        &json!({"monthly_tokens": null}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["budget"]["limit"].is_null(), "{body}");
    assert_eq!(body["budget"]["overridden"], false, "{body}");
    let (status, body) = api.post(acme, "/v1/jobs", &chat_job("Hello", None)).await;
    assert_eq!(status, 201, "{body}");
    fleet.env.finish().await;
}

#[tokio::test]
async fn chat_answers_and_keeps_the_conversation() {
    let fleet = ChatFleet::start(true, true).await;
    let (api, acme) = (&fleet.api, fleet.acme.as_str());
    let globex = fleet.env.create_key("globex");

    let (status, first) = api
        .post(acme, "/v1/chat?wait=30", &json!({"message": "Hello there"}))
        .await;
    assert_eq!(status, 200, "{first}");
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    assert_eq!(
        first["job_id"].as_str(),
        Some(conversation.as_str()),
        "a new conversation's id is its job's"
    );
    let response = first["response"].as_str().unwrap();
    assert!(!response.is_empty(), "{first}");
    assert_eq!(
        (first["model"].as_str(), first["provider"].as_str()),
        (Some(MODEL), Some("fleet"))
    );
    assert!(
        first["usage"]["input_tokens"].as_i64().unwrap() > 0,
        "{first}"
    );
    assert!(first["tool_calls"].is_array(), "{first}");

    let (status, page) = api.get(acme, "/v1/conversations").await;
    assert_eq!(status, 200, "{page}");
    let listed = &page["conversations"];
    assert_eq!(listed.as_array().unwrap().len(), 1, "{page}");
    assert_eq!(listed[0]["id"], conversation.as_str());
    assert_eq!(listed[0]["title"], "Hello there");
    assert_eq!(listed[0]["message_count"], 2);
    assert!(page["next_cursor"].is_null(), "{page}");

    let path = format!("/v1/conversations/{conversation}");
    let (status, detail) = api.get(acme, &path).await;
    assert_eq!(status, 200, "{detail}");
    let messages = detail["messages"].as_array().unwrap();
    let said: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(said, [("user", "Hello there"), ("assistant", response)]);
    assert_eq!(messages[1]["model"], MODEL);
    assert_eq!(messages[1]["usage"], first["usage"]);
    assert_eq!(messages[0]["job_id"], first["job_id"]);
    for (status, body) in [
        api.get(&globex, &path).await,
        api.delete(&globex, &path).await,
    ] {
        assert_eq!(status, 404, "another tenant's conversation: {body}");
    }
    let (_, theirs) = api.get(&globex, "/v1/conversations").await;
    assert_eq!(theirs["conversations"], json!([]));

    // The next message continues it; an Idempotency-Key finds the same turn again.
    let next = json!({"message": "Hello again", "conversation_id": conversation});
    let (status, _, second) = send(
        api,
        reqwest::Method::POST,
        acme,
        "/v1/chat?wait=30",
        Some(&next),
        &[("Idempotency-Key", "turn-2")],
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["conversation_id"], conversation.as_str());
    assert_ne!(second["job_id"], first["job_id"]);
    let (status, _, again) = send(
        api,
        reqwest::Method::POST,
        acme,
        "/v1/chat?wait=0",
        Some(&next),
        &[("Idempotency-Key", "turn-2")],
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["job_id"], second["job_id"]);
    let (_, detail) = api.get(acme, &path).await;
    assert_eq!(detail["message_count"], 4, "{detail}");

    // Without waiting: 202 with the job and its event stream, and the reply comes.
    let (status, pending) = api
        .post(
            acme,
            "/v1/chat?wait=0",
            &json!({"message": "Hello, anyone?"}),
        )
        .await;
    assert_eq!(status, 202, "{pending}");
    let job = pending["job_id"].as_str().unwrap();
    assert_eq!(pending["conversation_id"], job);
    assert_eq!(pending["events_url"], format!("/v1/jobs/{job}/events"));
    let finished = api.wait_finished(acme, job.parse().unwrap(), WITHIN).await;
    assert_eq!(finished["state"], "succeeded", "{finished}");

    // Pages, most recently active first.
    let (_, page) = api.get(acme, "/v1/conversations?limit=1").await;
    assert_eq!(page["conversations"][0]["id"], job, "{page}");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, page) = api
        .get(acme, &format!("/v1/conversations?limit=1&after={cursor}"))
        .await;
    assert_eq!(
        page["conversations"][0]["id"],
        conversation.as_str(),
        "{page}"
    );
    let (status, body) = api
        .post(acme, "/v1/chat?wait=61", &json!({"message": "Hi"}))
        .await;
    assert_eq!(status, 400, "{body}");

    // A reply the LLM cannot give is the job's error, as 502.
    let (status, set) = put(
        api,
        acme,
        "/v1/llm",
        &json!({
            "base_url": fleet.fake.openai_base_url(),
            "model": MODEL,
            "api_key": "sk-wrong-key-that-must-stay-secret-0123456789",
        }),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    let (status, failed) = api
        .post(acme, "/v1/chat?wait=30", &json!({"message": "Hello?"}))
        .await;
    assert_eq!(
        (status, failed["error"].as_str()),
        (502, Some("llm_failed")),
        "{failed}"
    );
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("rejected the API key"),
        "{failed}"
    );
    assert!(!failed.to_string().contains("sk-wrong-key"), "{failed}");

    let (status, _) = api.delete(acme, &path).await;
    assert_eq!(status, 204);
    let (status, _) = api.get(acme, &path).await;
    assert_eq!(status, 404);
    fleet.env.finish().await;
}
