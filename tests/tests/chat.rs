//! The chat agent end to end: `agent.chat` jobs through the API, a worker on the agent queue,
//! the fake OpenAI-compatible model deciding its answers from the messages it is sent (the
//! to-do assistant of `fake_providers::openai_assistant`), and real Redis and Postgres. The
//! two-turn example, a wrong id recovered, the reply streamed, the provider's failures, the
//! history trimmed, a budget shared by two workers, and the key kept out of sight.

use std::time::Duration;

use serde_json::{Value, json};
use taskfleet_tests::{
    Api,
    connector_fleet::ConnectorFleet,
    fake_providers::{FaultRule, OPENAI_API_KEY},
    wait_until,
};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(60);
const PATH: &str = "/openai/v1/chat/completions";

/// A fleet whose worker serves the agent queue, with the fake model as the fleet's LLM.
async fn chat_fleet(extra: &[(&str, &str)]) -> ConnectorFleet {
    ConnectorFleet::start_with_llm(&["--queues", "agent"], extra).await
}

async fn chat(api: &Api, key: &str, message: &str, conversation: Option<Uuid>) -> Value {
    let mut job = json!({"kind": "agent.chat", "message": message, "max_attempts": 3});
    if let Some(conversation) = conversation {
        job["conversation_id"] = json!(conversation);
    }
    let id = api.submit(key, job).await;
    api.wait_finished(key, id, WITHIN).await
}

fn succeeded(job: &Value) -> &Value {
    assert_eq!(job["state"], "succeeded", "{job:#}");
    &job["result"]
}

async fn task_titled(api: &Api, key: &str, title: &str) -> Value {
    let (status, page) = api.get(key, "/v1/tasks?status=open").await;
    assert_eq!(status, 200, "{page}");
    let (_, done) = api.get(key, "/v1/tasks?status=done").await;
    page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(done["tasks"].as_array().unwrap())
        .find(|task| task["title"] == title)
        .cloned()
        .unwrap_or_else(|| panic!("no task `{title}` in {page:#} / {done:#}"))
}

#[tokio::test]
async fn add_a_task_then_mark_it_as_complete() {
    let fleet = chat_fleet(&[]).await;
    let (api, key) = (&fleet.api, fleet.key.as_str());

    let first = chat(api, key, "Add a task to buy milk", None).await;
    let result = succeeded(&first);
    let conversation: Uuid = result["conversation_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(conversation.to_string(), first["id"].as_str().unwrap());
    assert_eq!(result["response"], "Added \"Buy milk\" to your tasks.");
    assert_eq!(result["tool_calls"][0]["name"], "add_task");
    assert_eq!(result["tool_calls"][0]["arguments"]["title"], "Buy milk");
    assert!(
        result["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "{result}"
    );
    let milk = task_titled(api, key, "Buy milk").await;
    assert_eq!(milk["status"], "open");
    assert_eq!(milk["source_kind"], "manual");

    // The model finds the task's id in the tool result of the turn before.
    let second = chat(api, key, "Mark it as complete", Some(conversation)).await;
    let result = succeeded(&second);
    assert_eq!(result["conversation_id"], json!(conversation));
    assert_eq!(result["response"], "Marked \"Buy milk\" as complete.");
    assert_eq!(result["tool_calls"][0]["name"], "complete_task");
    assert_eq!(result["tool_calls"][0]["arguments"]["task_id"], milk["id"]);
    assert_eq!(task_titled(api, key, "Buy milk").await["status"], "done");

    // Both turns are stored: the messages, the replies, and the tool calls with results.
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT role, content, tool_calls FROM chat_messages
         WHERE conversation_id = $1 ORDER BY id",
    )
    .bind(conversation)
    .fetch_all(&fleet.env.pool)
    .await
    .unwrap();
    let said: Vec<(&str, &str)> = rows
        .iter()
        .map(|(role, content, _)| (role.as_str(), content.as_str()))
        .collect();
    assert_eq!(
        said,
        vec![
            ("user", "Add a task to buy milk"),
            ("assistant", "Added \"Buy milk\" to your tasks."),
            ("user", "Mark it as complete"),
            ("assistant", "Marked \"Buy milk\" as complete."),
        ]
    );
    assert_eq!(rows[3].2[0]["result"]["task"]["status"], "done");
    // Usage is recorded per call, as chat.
    let (calls, tokens): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(input_tokens + output_tokens)::bigint FROM llm_usage
         WHERE purpose = 'chat'",
    )
    .fetch_one(&fleet.env.pool)
    .await
    .unwrap();
    assert_eq!(calls, 4, "two model calls a turn");
    let (input, output) = fleet.fake.chat_usage();
    assert_eq!(tokens as u64, input + output);
    fleet.env.finish().await;
}

#[tokio::test]
async fn a_wrong_id_is_a_tool_error_the_model_recovers_from() {
    let fleet = chat_fleet(&[]).await;
    let (api, key) = (&fleet.api, fleet.key.as_str());
    let (status, milk) = api
        .post(key, "/v1/tasks", &json!({"title": "Buy milk"}))
        .await;
    assert_eq!(status, 201, "{milk}");

    let job = chat(
        api,
        key,
        "Complete task 00000000-0000-4000-8000-00000000dead, the one about milk",
        None,
    )
    .await;
    let result = succeeded(&job);
    let calls = result["tool_calls"].as_array().unwrap();
    let names: Vec<&str> = calls.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["complete_task", "list_tasks", "complete_task"]);
    assert_eq!(calls[0]["result"]["error"], "not_found", "{result:#}");
    assert!(
        calls[0]["result"]["message"]
            .as_str()
            .unwrap()
            .contains("list_tasks")
    );
    assert_eq!(calls[2]["arguments"]["task_id"], milk["id"]);
    assert_eq!(result["response"], "Marked \"Buy milk\" as complete.");
    assert_eq!(task_titled(api, key, "Buy milk").await["status"], "done");
    fleet.env.finish().await;
}

#[tokio::test]
async fn the_reply_streams_as_progress_events() {
    let fleet = chat_fleet(&[]).await;
    let (api, key) = (&fleet.api, fleet.key.as_str());
    let job = chat(api, key, "Hello there", None).await;
    let response = succeeded(&job)["response"].as_str().unwrap().to_owned();
    let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let pieces = fleet.env.progress_messages(id).await;
    assert!(!pieces.is_empty(), "no progress events");
    assert_eq!(pieces.concat(), response);
    fleet.env.finish().await;
}

#[tokio::test]
async fn the_provider_failures_retry_or_kill_as_they_should() {
    let fleet = chat_fleet(&[("TASKFLEET_LLM_TIMEOUT_SECS", "1")]).await;
    let (api, key) = (&fleet.api, fleet.key.as_str());

    // 429 with retry-after: the next attempt waits the provider's delay, then succeeds.
    fleet
        .fake
        .fail_next(FaultRule::openai_rate_limited(PATH, 2, 1));
    let job = chat(api, key, "Hello", None).await;
    succeeded(&job);
    assert_eq!(job["attempt"], 2, "{job:#}");
    let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let starts = fleet.env.event_times(id, "job_started").await;
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(
        (starts[1] - starts[0]).num_milliseconds() >= 2_000,
        "the retry waited the provider's 2 s: {starts:?}"
    );

    // 5xx: retried with backoff.
    fleet
        .fake
        .fail_next(FaultRule::openai_server_error(PATH, 503, 1));
    let job = chat(api, key, "Hello again", None).await;
    succeeded(&job);
    assert_eq!(job["attempt"], 2, "{job:#}");

    // A reply that never ends: each attempt times out, and the job is dead after its three.
    let job = chat(api, key, "Please stall", None).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("no answer within 1s"),
        "{job:#}"
    );
    // What the model wrote before it stalled was streamed while the call still ran.
    let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let pieces = fleet.env.progress_messages(id).await;
    assert!(
        pieces.iter().any(|piece| piece.starts_with("Let")),
        "{pieces:?}"
    );
    fleet.env.finish().await;
}

#[tokio::test]
async fn a_rejected_key_kills_the_job_and_the_key_is_never_shown() {
    let secret = "sk-wrong-key-that-must-stay-secret-0123456789";
    let fleet = chat_fleet(&[("TASKFLEET_LLM_API_KEY", secret)]).await;
    let (api, key) = (&fleet.api, fleet.key.as_str());

    let job = chat(api, key, "Add a task to buy milk", None).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!(job["attempt"], 1, "no retry: {job:#}");
    assert_eq!(job["error"], "the LLM provider rejected the API key");
    assert!(!job.to_string().contains(secret));
    let id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let events: Vec<Value> =
        sqlx::query_scalar("SELECT details FROM all_job_events WHERE job_id = $1")
            .bind(id)
            .fetch_all(&fleet.env.pool)
            .await
            .unwrap();
    assert!(!Value::from(events).to_string().contains(secret));
    assert!(!fleet.env.logs().contains(secret));
    fleet.env.finish().await;
}

#[tokio::test]
async fn history_beyond_ten_messages_is_left_out() {
    let fleet = chat_fleet(&[]).await;
    let (api, key) = (&fleet.api, fleet.key.as_str());
    let first = chat(api, key, "Hello 0", None).await;
    let conversation: Uuid = succeeded(&first)["conversation_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for n in 1..=6 {
        succeeded(&chat(api, key, &format!("Hello {n}"), Some(conversation)).await);
    }
    // The last request carried the system prompt, the last 10 messages and the new one.
    let sent = fleet.fake.chat_requests();
    let last = sent.last().unwrap();
    let messages = last["messages"].as_array().unwrap();
    let texts: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "Hello 1", "Hello 2", "Hello 3", "Hello 4", "Hello 5", "Hello 6"
        ],
        "{messages:#?}"
    );
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages.len(), 1 + 10 + 1, "{messages:#?}");
    fleet.env.finish().await;
}

#[tokio::test]
async fn two_workers_chatting_for_one_tenant_stay_within_its_budget() {
    // Each call reserves its prompt and 1,024 answer tokens; 6,000 lets a few calls through.
    const BUDGET: i64 = 6_000;
    let budget = [("TASKFLEET_LLM_MONTHLY_TOKENS", "6000")];
    let mut fleet = chat_fleet(&budget).await;
    fleet.start_worker(&["--queues", "agent"], &budget);
    let (api, key) = (&fleet.api, fleet.key.clone());
    let mut ids = Vec::new();
    let mut refused = 0;
    for n in 0..12 {
        let job = json!({"kind": "agent.chat", "message": format!("Add a task to buy item {n}")});
        let (status, body) = api.post(&key, "/v1/jobs", &job).await;
        if status == 429 {
            assert_eq!(body["error"], "budget_exceeded", "{body}");
            refused += 1;
            continue;
        }
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let mut dead = 0;
    for id in &ids {
        let job = api.wait_finished(&key, *id, WITHIN).await;
        if job["state"] == "dead" {
            assert!(
                job["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("budget_exceeded"),
                "{job:#}"
            );
            dead += 1;
        }
    }
    // The budget ran out: at the door once it was spent, or for jobs already accepted.
    assert!(dead + refused > 0, "nothing was refused");
    let spent: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(input_tokens + output_tokens), 0)::bigint FROM llm_usage",
    )
    .fetch_one(&fleet.env.pool)
    .await
    .unwrap();
    assert!(spent <= BUDGET, "spent {spent} of {BUDGET}");
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM llm_reservations")
        .fetch_one(&fleet.env.pool)
        .await
        .unwrap();
    assert_eq!(held, 0, "every reservation settled");
    // Once spent, new chat jobs are refused at the door.
    wait_until(WITHIN, "the door to close", || async {
        let job = json!({"kind": "agent.chat", "message": "one more"});
        api.post(&key, "/v1/jobs", &job).await.0 == 429
    })
    .await;
    fleet.env.finish().await;
}

#[tokio::test]
async fn a_tenants_own_provider_answers_its_chats_and_its_key_stays_sealed() {
    // No fleet LLM: only a tenant that brings its own provider can chat.
    let fleet = ConnectorFleet::start_logged(&["--queues", "agent"], &[]).await;
    let (api, key) = (&fleet.api, fleet.key.as_str());
    let refused = json!({"kind": "agent.chat", "message": "Add a task to buy milk"});
    let (status, body) = api.post(key, "/v1/jobs", &refused).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("llm_not_configured")),
        "{body}"
    );

    let provider = json!({
        "base_url": fleet.fake.openai_base_url(),
        "model": "gpt-4o-mini",
        "api_key": OPENAI_API_KEY,
    });
    let (status, body) = api
        .call(reqwest::Method::PUT, key, "/v1/llm", Some(&provider))
        .await;
    assert_eq!(status, 200, "{body}");
    let result = succeeded(&chat(api, key, "Add a task to buy milk", None).await).clone();
    assert_eq!(result["provider"], "tenant", "{result}");
    assert_eq!(result["response"], "Added \"Buy milk\" to your tasks.");

    // The key is sealed at rest and shows nowhere.
    let sealed: String = sqlx::query_scalar("SELECT api_key FROM llm_providers")
        .fetch_one(&fleet.env.pool)
        .await
        .unwrap();
    assert!(!sealed.contains(OPENAI_API_KEY));
    let (_, shown) = api.get(key, "/v1/llm").await;
    assert_eq!(shown["has_key"], true, "{shown}");
    assert!(!shown.to_string().contains(OPENAI_API_KEY));
    assert!(!result.to_string().contains(OPENAI_API_KEY));
    assert!(!fleet.env.logs().contains(OPENAI_API_KEY));

    // A key the provider rejects kills the tenant's next chat at once.
    let wrong = json!({
        "base_url": fleet.fake.openai_base_url(),
        "model": "gpt-4o-mini",
        "api_key": "sk-not-the-one",
    });
    let (status, _) = api
        .call(reqwest::Method::PUT, key, "/v1/llm", Some(&wrong))
        .await;
    assert_eq!(status, 200);
    let job = chat(api, key, "Hello", None).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert_eq!(job["error"], "the LLM provider rejected the API key");
    fleet.env.finish().await;
}

/// The machine's own name, when it resolves to a loopback address (as Debian's /etc/hosts
/// makes it): a URL a tenant types with it looks public but reaches this machine.
fn own_name_resolving_to_loopback() -> Option<String> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_owned();
    let loopback = (name.as_str(), 80)
        .to_socket_addrs()
        .ok()?
        .all(|address| address.ip().is_loopback());
    loopback.then_some(name)
}

#[tokio::test]
async fn a_tenants_url_may_not_reach_this_machine_by_any_name() {
    let fleet = ConnectorFleet::start(
        &["--queues", "agent"],
        &[("TASKFLEET_ALLOW_LOCAL_SITES", "false")],
    )
    .await;
    let (api, key) = (&fleet.api, fleet.key.as_str());
    let put = |base_url: String| json!({"base_url": base_url, "model": "gpt-4o-mini", "api_key": OPENAI_API_KEY});
    let port = url::Url::parse(&fleet.fake.openai_base_url())
        .unwrap()
        .port()
        .unwrap();
    // Literal addresses and localhost names are refused when set.
    for refused in [
        format!("http://127.0.0.1:{port}/openai/v1"),
        format!("http://localhost.:{port}/openai/v1"),
        "http://169.254.169.254/latest".to_owned(),
    ] {
        let (status, body) = api
            .call(
                reqwest::Method::PUT,
                key,
                "/v1/llm",
                Some(&put(refused.clone())),
            )
            .await;
        assert_eq!(status, 422, "{refused}: {body}");
    }
    // A name is judged by the addresses it resolves to, when a call connects.
    let Some(name) = own_name_resolving_to_loopback() else {
        eprintln!("skipped the name check: this machine's name does not resolve to loopback");
        return fleet.env.finish().await;
    };
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            key,
            "/v1/llm",
            Some(&put(format!("http://{name}:{port}/openai/v1"))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, test) = api.post(key, "/v1/llm/test", &json!({})).await;
    assert_eq!(status, 200, "{test}");
    assert_eq!(test["ok"], false, "{test}");
    let job = json!({"kind": "agent.chat", "message": "Hello", "max_attempts": 1});
    let id = api.submit(key, job).await;
    let job = api.wait_finished(key, id, WITHIN).await;
    assert_eq!(job["state"], "dead", "{job:#}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .starts_with("the LLM provider is unavailable"),
        "{job:#}"
    );
    assert_eq!(
        fleet.fake.requests("/chat/completions"),
        0,
        "no call got through"
    );
    fleet.env.finish().await;
}
