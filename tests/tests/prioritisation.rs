//! The pipeline end to end, with the fake providers and the local model: connect GitHub and
//! Jira, ingest, embed (the same bug filed in both shows once), prioritise, and read the
//! focus lists; then the user's hand on them (complete, undo, a task typed in, a delete), a
//! switch of embedder, and the embedder's failures.

use std::time::Duration;

use serde_json::Value;
use taskfleet_tests::{
    Api, assert_worker_not_ready,
    connector_fleet::ConnectorFleet,
    fake_providers::{
        ChatMode, Draft, FAKE_REVIEW_REASON, FakeProvider, FaultRule, OPENAI_API_KEY, Priority,
    },
    json, wait_for_some, wait_until, wait_worker_ready,
};

const WITHIN: Duration = Duration::from_secs(120);
const BUG_TITLE: &str = "Checkout fails with a 500 when the cart holds a gift card";
const BUG_BODY: &str = "Customers paying with a gift card get an internal server error at the \
     last checkout step; the order is not created and the card is not charged.";

/// Waits until no ingest, embed or prioritise job is left to run, and at least `ranked`
/// rankings succeeded.
async fn settled(fleet: &ConnectorFleet, ranked: i64) {
    let pool = fleet.env.pool.clone();
    wait_until(WITHIN, "the pipeline to settle", || {
        let pool = pool.clone();
        async move {
            let (open, done): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state NOT IN ('succeeded', 'dead', 'cancelled')),
                        count(*) FILTER (WHERE kind = 'agent.prioritise' AND state = 'succeeded')
                 FROM jobs WHERE kind IN ('ingest.connector', 'embed.items', 'agent.prioritise')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            open == 0 && done >= ranked
        }
    })
    .await;
}

async fn focus(api: &Api, key: &str, horizon: &str) -> Vec<Value> {
    let (status, page) = api.get(key, &format!("/v1/tasks?horizon={horizon}")).await;
    assert_eq!(status, 200, "{page}");
    page["tasks"].as_array().unwrap().clone()
}

fn titled<'a>(tasks: &'a [Value], title: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| t["title"] == title)
        .unwrap_or_else(|| panic!("no `{title}` among {tasks:#?}"))
}

/// Seeds [`seed_bug_in_github_and_jira`]'s items, connects both accounts, and waits for the
/// first ranking.
async fn connect_github_and_jira(fleet: &ConnectorFleet) {
    seed_bug_in_github_and_jira(fleet);
    fleet.connect_oauth("github").await;
    fleet.connect_oauth("jira").await;
    settled(fleet, 1).await;
}

fn seed_bug_in_github_and_jira(fleet: &ConnectorFleet) {
    fleet.fake.seed_drafts(
        FakeProvider::Github,
        vec![
            Draft::new(BUG_TITLE, BUG_BODY, Some(-2), &["p0", "bug"])
                .with_priority(Priority::Highest),
            Draft::new(
                "Rotate the staging database password",
                "It expires today.",
                Some(0),
                &[],
            ),
            Draft::new(
                "Tidy the README badges",
                "Two of them link nowhere.",
                None,
                &["docs"],
            )
            .with_priority(Priority::Low),
        ],
    );
    fleet.fake.seed_drafts(
        FakeProvider::Jira,
        vec![
            Draft::new(BUG_TITLE, BUG_BODY, None, &[]).with_priority(Priority::High),
            Draft::new(
                "Renew the TLS certificate of the API",
                "It expires at midnight.",
                Some(0),
                &[],
            )
            .with_priority(Priority::Medium),
            Draft::new(
                "Send the incident report to Globex",
                "They asked for the timeline of Tuesday's outage and what we changed since.",
                Some(0),
                &[],
            )
            .with_priority(Priority::High),
            Draft::new(
                "Approve the December on-call rotation",
                "Three people swapped shifts; the calendar needs a lead's approval.",
                Some(-1),
                &[],
            )
            .with_priority(Priority::Medium),
            Draft::new(
                "Plan the Q1 capacity review",
                "Collect last quarter's peaks.",
                Some(20),
                &[],
            )
            .with_priority(Priority::Low),
        ],
    );
}

#[tokio::test]
async fn connected_work_is_deduplicated_ranked_and_three_per_horizon() {
    let fleet = ConnectorFleet::start(&["--queues", "embed,agent"], &[]).await;
    connect_github_and_jira(&fleet).await;

    let today = focus(&fleet.api, &fleet.key, "today").await;
    // Five tasks are due today or overdue: the list shows three.
    assert_eq!(today.len(), 3, "{today:#?}");
    let first = &today[0];
    assert_eq!(first["title"], BUG_TITLE, "{today:#?}");
    assert_eq!(first["source_kind"], "github");
    assert_eq!(first["rank"], 1);
    assert_eq!(first["ranked_by"], "formula");
    assert!(
        first["reason"]
            .as_str()
            .unwrap()
            .contains("overdue by 2 days"),
        "{first}"
    );
    assert_eq!(first["scores"]["urgency"], 1.0, "{first}");
    for horizon in ["today", "week", "month"] {
        let list = focus(&fleet.api, &fleet.key, horizon).await;
        assert!(list.len() <= 3, "{horizon}: {list:#?}");
        let ranks: Vec<i64> = list.iter().map(|t| t["rank"].as_i64().unwrap()).collect();
        assert_eq!(
            ranks,
            (1..=list.len() as i64).collect::<Vec<_>>(),
            "{horizon}"
        );
        assert!(
            list.iter()
                .all(|t| t["horizon"] == horizon && t["status"] == "open")
        );
        // The bug shows once: its Jira twin points at the GitHub issue and ranks nowhere.
        assert!(
            list.iter()
                .all(|t| t["source_kind"] != "jira" || t["title"] != BUG_TITLE)
        );
    }
    let jira = fleet.tasks("jira").await;
    let twin = titled(&jira, BUG_TITLE);
    assert_eq!(twin["duplicate_of"], first["id"], "{twin}");
    assert!(twin["rank"].is_null(), "{twin}");
    // Tasks that merely share a word are not duplicates.
    assert!(
        jira.iter().filter(|t| !t["duplicate_of"].is_null()).count() == 1,
        "{jira:#?}"
    );

    // The graph joins the twin to its original; every node sits in its lane.
    let (status, graph) = fleet
        .api
        .get(&fleet.key, "/v1/tasks/graph?window=month")
        .await;
    assert_eq!(status, 200, "{graph}");
    let edges = graph["edges"].as_array().unwrap();
    assert!(
        edges
            .iter()
            .any(|e| e["from"] == twin["id"] && e["to"] == first["id"] && e["kind"] == "duplicate"),
        "{graph}"
    );
    let nodes = graph["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.len() as i64,
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tasks")
            .fetch_one(&fleet.env.pool)
            .await
            .unwrap()
    );
    let node = nodes.iter().find(|n| n["id"] == first["id"]).unwrap();
    assert_eq!(node["lane"], "today", "{node}");
    let (status, _) = fleet
        .api
        .get(&fleet.key, "/v1/tasks/graph?window=year")
        .await;
    assert_eq!(status, 400);

    // Completing the first moves the list up; undo puts it back.
    let id = first["id"].as_str().unwrap();
    let (status, done) = fleet
        .api
        .post(&fleet.key, &format!("/v1/tasks/{id}/complete"), &json!({}))
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "done");
    assert!(done["completed_at"].is_string());
    settled(&fleet, 2).await;
    let today = focus(&fleet.api, &fleet.key, "today").await;
    assert!(today.iter().all(|t| t["id"] != id), "{today:#?}");
    let past = focus(&fleet.api, &fleet.key, "past7d").await;
    assert_eq!(past[0]["id"], id, "{past:#?}");
    let (status, undone) = fleet
        .api
        .post(&fleet.key, &format!("/v1/tasks/{id}/undo"), &json!({}))
        .await;
    assert_eq!(status, 200, "{undone}");
    assert_eq!(undone["status"], "open");
    assert!(undone["completed_at"].is_null());
    settled(&fleet, 3).await;
    assert_eq!(focus(&fleet.api, &fleet.key, "today").await[0]["id"], id);

    // Its vectors are the tenant's, in the local model's space, one per embedded task.
    let embedded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks WHERE embedded_with = 'local:all-MiniLM-L6-v2@1110a24'",
    )
    .fetch_one(&fleet.env.pool)
    .await
    .unwrap();
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&fleet.env.pool)
        .await
        .unwrap();
    assert_eq!(embedded, all);
    fleet.finish().await;
}

#[tokio::test]
async fn tasks_typed_by_hand_are_ranked_edited_deleted_and_kept_to_their_tenant() {
    let fleet = ConnectorFleet::start(&["--queues", "embed,agent"], &[]).await;
    let due = chrono::Utc::now() - chrono::Duration::days(1);
    let (status, created) = fleet
        .api
        .post(
            &fleet.key,
            "/v1/tasks",
            &json!({"title": "Buy milk", "description": "Oat, two cartons", "due_at": due}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["source_kind"], "manual");
    let id = created["id"].as_str().unwrap().to_owned();
    settled(&fleet, 1).await;
    let today = focus(&fleet.api, &fleet.key, "today").await;
    assert_eq!(today[0]["id"], id.as_str(), "{today:#?}");

    // An edit of the text embeds it again; clearing the due date ranks it again.
    let (status, edited) = fleet
        .api
        .patch(
            &fleet.key,
            &format!("/v1/tasks/{id}"),
            &json!({"title": "Buy oat milk", "due_at": null}),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert!(edited["due_at"].is_null());
    settled(&fleet, 2).await;
    let (_, task) = fleet.api.get(&fleet.key, &format!("/v1/tasks/{id}")).await;
    assert_eq!(task["title"], "Buy oat milk");
    for (q, found) in [
        ("OAT MILK", 1),
        ("two cartons", 1),
        ("100%", 0),
        ("oat_", 0),
    ] {
        let query = serde_urlencoded::to_string([("q", q)]).unwrap();
        let (status, page) = fleet
            .api
            .get(&fleet.key, &format!("/v1/tasks?{query}"))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(
            page["tasks"].as_array().unwrap().len(),
            found,
            "q={q}: {page}"
        );
    }
    assert_ne!(task["horizon"], "today", "{task}");

    // Bad input and other tenants' ids.
    for (body, field) in [
        (json!({"title": ""}), "title"),
        (json!({"description": "x"}), "TaskInput"),
        (json!({"title": "x", "due_at": "tomorrow"}), "date-time"),
    ] {
        let (status, err) = fleet.api.post(&fleet.key, "/v1/tasks", &body).await;
        assert_eq!(status, 422, "{body}: {err}");
        assert!(err["message"].as_str().unwrap().contains(field), "{err}");
    }
    let other = fleet.env.create_key("globex");
    for (method, path) in [
        ("GET", format!("/v1/tasks/{id}")),
        ("POST", format!("/v1/tasks/{id}/complete")),
        ("DELETE", format!("/v1/tasks/{id}")),
    ] {
        let (status, err) = match method {
            "GET" => fleet.api.get(&other, &path).await,
            "POST" => fleet.api.post(&other, &path, &json!({})).await,
            _ => fleet.api.delete(&other, &path).await,
        };
        assert_eq!(status, 404, "{method} {path}: {err}");
        assert_eq!(err["error"], "not_found", "{err}");
    }
    let (status, err) = fleet
        .api
        .post(&fleet.key, &format!("/v1/tasks/{id}/undo"), &json!({}))
        .await;
    assert_eq!(
        status, 409,
        "a task never completed has nothing to undo: {err}"
    );

    // A delete removes the row and, through an embed job, its vector.
    let (status, _) = fleet
        .api
        .delete(&fleet.key, &format!("/v1/tasks/{id}"))
        .await;
    assert_eq!(status, 204);
    let job = wait_for_some(WITHIN, "the vector removal finished", || async {
        // The latest embed job naming the task: the one its delete enqueued.
        let (state, result): (String, Option<Value>) = sqlx::query_as(
            "SELECT state, result FROM jobs WHERE kind = 'embed.items'
               AND payload -> 'item_ids' ->> 0 = $1
             ORDER BY id DESC LIMIT 1",
        )
        .bind(&id)
        .fetch_one(&fleet.env.pool)
        .await
        .unwrap();
        result.filter(|_| state == "succeeded")
    })
    .await;
    assert_eq!(job["unknown"], json!([id]), "{job}");
    assert_eq!(job["vectors_removed"], json!([id]), "{job}");
    let (status, _) = fleet.api.get(&fleet.key, &format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 404);
    fleet.finish().await;
}

#[tokio::test]
async fn switching_embedder_embeds_again_and_a_rejected_key_kills_the_job() {
    let mut fleet = ConnectorFleet::start(&["--queues", "embed,agent"], &[]).await;
    // The API is child 0, the first worker child 1.
    let local_worker = 1;
    connect_github_and_jira(&fleet).await;
    let before: Vec<String> = sqlx::query_scalar("SELECT DISTINCT embedded_with FROM tasks")
        .fetch_all(&fleet.env.pool)
        .await
        .unwrap();
    assert_eq!(before, ["local:all-MiniLM-L6-v2@1110a24"]);

    // The fleet moves to an OpenAI-compatible endpoint: a worker starting with it embeds
    // every task again, in the new space.
    fleet.env.terminate(local_worker);
    let base = fleet.fake.openai_base_url();
    let openai = [
        ("TASKFLEET_EMBEDDER", "openai"),
        ("TASKFLEET_EMBED_BASE_URL", base.as_str()),
        ("TASKFLEET_EMBED_MODEL", "text-embedding-3-small"),
        ("TASKFLEET_EMBED_API_KEY", OPENAI_API_KEY),
        ("TASKFLEET_EMBED_DIMENSIONS", "256"),
    ];
    fleet.fake.fail_next(FaultRule::openai_rate_limited(
        "/openai/v1/embeddings",
        1,
        1,
    ));
    let openai_worker = fleet.start_worker(&["--queues", "embed,agent"], &openai);
    let space = format!("openai:text-embedding-3-small:256@{base}");
    let pool = fleet.env.pool.clone();
    wait_until(WITHIN, "every task embedded by the endpoint", || {
        let (pool, space) = (pool.clone(), space.clone());
        async move {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tasks WHERE embedded_with IS DISTINCT FROM $1",
            )
            .bind(&space)
            .fetch_one(&pool)
            .await
            .unwrap();
            left == 0
        }
    })
    .await;
    // The 429 was waited out with the provider's delay, not failed.
    let retried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j, jsonb_array_elements(j.attempt_errors) e
         WHERE j.kind = 'embed.items' AND e ->> 'error' LIKE '%rate limiting%'",
    )
    .fetch_one(&fleet.env.pool)
    .await
    .unwrap();
    assert!(retried >= 1);
    // What the endpoint charged is the tenant's `embed` usage; the local model's was free.
    let (model, tokens): (String, i64) = sqlx::query_as(
        "SELECT model, sum(input_tokens)::bigint FROM llm_usage
         WHERE purpose = 'embed' GROUP BY model",
    )
    .fetch_one(&fleet.env.pool)
    .await
    .unwrap();
    assert_eq!(model, "text-embedding-3-small");
    assert!(tokens > 0);

    // A rejected key: the job is dead at once, saying so.
    fleet.env.terminate(openai_worker);
    let wrong = openai.map(|(k, v)| {
        if k == "TASKFLEET_EMBED_API_KEY" {
            (k, "sk-wrong")
        } else {
            (k, v)
        }
    });
    fleet.start_worker(&["--queues", "embed,agent"], &wrong);
    let (status, created) = fleet
        .api
        .post(&fleet.key, "/v1/tasks", &json!({"title": "Call the bank"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let job = wait_for_some(WITHIN, "the embed job of the new task ended", || async {
        sqlx::query_as::<_, (String, i32, Option<String>)>(
            "SELECT state, attempt, error FROM jobs WHERE kind = 'embed.items'
               AND payload -> 'item_ids' ->> 0 = $1 AND state IN ('dead', 'succeeded')",
        )
        .bind(created["id"].as_str().unwrap())
        .fetch_optional(&fleet.env.pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(job.0, "dead", "{job:?}");
    assert_eq!(job.1, 1, "no retry for a rejected key: {job:?}");
    assert_eq!(
        job.2.as_deref(),
        Some("the embedding provider rejected the API key")
    );
    fleet.finish().await;
}

#[tokio::test]
async fn a_worker_whose_vector_store_stops_answering_is_not_ready_and_says_why() {
    let mut env = taskfleet_tests::TestEnv::new().await;
    let addr = format!("127.0.0.1:{}", taskfleet_tests::free_port());
    env.start_worker(&["--queues", "embed,agent", "--metrics-addr", &addr]);
    wait_worker_ready(&addr, WITHIN).await;
    // The store's directory is replaced by a file: lancedb can no longer list it.
    std::fs::remove_dir_all(&env.vector_dir).unwrap();
    std::fs::write(&env.vector_dir, b"not a directory").unwrap();
    assert_worker_not_ready(&addr, "vector store").await;
    std::fs::remove_file(&env.vector_dir).unwrap();
    env.finish().await;
}

/// The latest `agent.prioritise` job's result.
async fn last_ranking(fleet: &ConnectorFleet) -> Value {
    sqlx::query_scalar(
        "SELECT result FROM jobs WHERE kind = 'agent.prioritise' AND state = 'succeeded'
         ORDER BY finished_at DESC LIMIT 1",
    )
    .fetch_one(&fleet.env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_llm_reviews_the_formulas_candidates_and_the_formula_stands_when_it_answers_badly() {
    // The first worker embeds; the second, the only one serving `agent`, has the LLM.
    let mut fleet = ConnectorFleet::start(&["--queues", "embed"], &[]).await;
    let base = fleet.fake.openai_base_url();
    fleet.start_worker(
        &["--queues", "agent"],
        &[
            ("TASKFLEET_LLM_BASE_URL", base.as_str()),
            ("TASKFLEET_LLM_MODEL", "gpt-4o-mini"),
            ("TASKFLEET_LLM_API_KEY", OPENAI_API_KEY),
        ],
    );
    connect_github_and_jira(&fleet).await;

    // The fake reviewer answers the formula's top 3 in reverse: the overdue P0, first by
    // the formula, is third by the model.
    let today = focus(&fleet.api, &fleet.key, "today").await;
    assert_eq!(today.len(), 3, "{today:#?}");
    assert_eq!(today[2]["title"], BUG_TITLE, "{today:#?}");
    for task in &today {
        assert_eq!(task["ranked_by"], "gpt-4o-mini", "{task}");
        assert_eq!(task["reason"], FAKE_REVIEW_REASON, "{task}");
    }
    let result = last_ranking(&fleet).await;
    assert_eq!(result["ranked_by"], "gpt-4o-mini", "{result}");
    assert!(result["review"]["picks"].as_u64().unwrap() >= 3, "{result}");
    let (calls, tokens): (i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(input_tokens + output_tokens)::bigint FROM llm_usage
         WHERE model = 'gpt-4o-mini' AND purpose = 'prioritise'",
    )
    .fetch_one(&fleet.env.pool)
    .await
    .unwrap();
    assert!(calls >= 1 && tokens > 0, "{calls} reviews, {tokens} tokens");

    // An answer that is not a review: the formula's ranking stands, and the result says why.
    fleet.fake.set_chat_mode(ChatMode::OffSchema);
    let (status, created) = fleet
        .api
        .post(
            &fleet.key,
            "/v1/tasks",
            &json!({"title": "Call the bank back"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    settled(&fleet, 2).await;
    let result = last_ranking(&fleet).await;
    assert_eq!(result["ranked_by"], "formula", "{result}");
    assert!(
        result["review"]["error"]
            .as_str()
            .unwrap()
            .contains("not a valid review"),
        "{result}"
    );
    let today = focus(&fleet.api, &fleet.key, "today").await;
    assert_eq!(today[0]["title"], BUG_TITLE, "{today:#?}");
    assert_eq!(today[0]["ranked_by"], "formula");
    fleet.finish().await;
}

#[tokio::test]
async fn a_repeat_embedded_before_its_original_still_points_at_it() {
    // No worker yet: the tasks' own embed jobs wait, and are cancelled, so this test chooses
    // the order: the newer task is embedded first, alone, as a job beside it would.
    let mut env = taskfleet_tests::TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    let mut ids = Vec::new();
    for source in ["the support inbox", "the status page"] {
        let body = json!({
            "title": "The export to S3 fails every night since Monday",
            "description": format!("Reported from {source}: the nightly export job dies with AccessDenied."),
        });
        let (status, task) = api.post(&key, "/v1/tasks", &body).await;
        assert_eq!(status, 201, "{task}");
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let waiting: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM jobs WHERE kind = 'embed.items'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for job in waiting {
        let (status, body) = api
            .post(&key, &format!("/v1/jobs/{job}/cancel"), &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    env.start_worker(&["--queues", "embed,agent"]);
    for id in [&ids[1], &ids[0]] {
        let job = api
            .submit(&key, json!({"kind": "embed.items", "item_ids": [id]}))
            .await;
        let done = api.wait_finished(&key, job, WITHIN).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let (_, newer) = api.get(&key, &format!("/v1/tasks/{}", ids[1])).await;
    assert_eq!(newer["duplicate_of"], ids[0].as_str(), "{newer}");
    let (_, older) = api.get(&key, &format!("/v1/tasks/{}", ids[0])).await;
    assert!(older["duplicate_of"].is_null(), "{older}");
    env.finish().await;
}

#[tokio::test]
async fn a_worker_refuses_to_start_with_an_embedder_or_llm_half_configured() {
    let mut env = taskfleet_tests::TestEnv::new().await;
    env.capture_logs();
    let workers = [
        env.start_worker_env(&[], &[("TASKFLEET_EMBEDDER", "openai")]),
        env.start_worker_env(&[], &[("TASKFLEET_LLM_MODEL", "gpt-4o-mini")]),
        env.start_worker_env(&[], &[("TASKFLEET_DUPLICATE_THRESHOLD", "1.5")]),
        env.start_worker_env(&[], &[("TASKFLEET_PRIORITY_WEIGHTS", "speed=1")]),
    ];
    wait_until(WITHIN, "every worker refuses to start", || {
        let stopped = workers.iter().all(|&w| !env.is_running(w));
        async move { stopped }
    })
    .await;
    let logs = env.logs();
    for expected in [
        "TASKFLEET_EMBEDDER=openai needs TASKFLEET_EMBED_BASE_URL, TASKFLEET_EMBED_MODEL, TASKFLEET_EMBED_DIMENSIONS",
        "set TASKFLEET_LLM_BASE_URL and TASKFLEET_LLM_MODEL together",
        "TASKFLEET_DUPLICATE_THRESHOLD must be between 0 and 1",
        "unknown weight `speed`",
    ] {
        assert!(logs.contains(expected), "{expected}: {logs}");
    }
    env.finish().await;
}
