//! The audit log: keys created and revoked, queue pauses, schedule, connector, budget and LLM
//! provider changes and retries by hand are listed for operators at `GET /v1/audit`, newest
//! first, with the acting key as `keys list` shows it; a refused change leaves nothing; the
//! leader deletes events once the longest job retention has passed.

use std::time::Duration;

use serde_json::Value;
use taskfleet_tests::{Api, TestEnv, json, wait_until};
use uuid::Uuid;

/// Secrets the changes carry, which no audit event may show.
const GITHUB_TOKEN: &str = "ghp_audit_secret_token";
const LLM_KEY: &str = "sk-audit-secret-key";

/// A key as `taskfleet-api keys list` and the audit log show it.
fn shown(key: &str) -> String {
    format!("{}…", &key[..12])
}

/// Every event `key` may read with `query`, page after page of `limit`.
async fn all_events(api: &Api, key: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/audit?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = api.get(key, &path).await;
        assert_eq!(status, 200, "{path}: {page}");
        let got = page["events"].as_array().unwrap();
        assert!(got.len() <= limit, "{page}");
        events.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return events,
        }
    }
}

fn created_id(status: u16, body: &Value) -> String {
    assert!(matches!(status, 200 | 201), "{body}");
    body["id"].as_str().unwrap().to_owned()
}

fn api_command_ok(env: &TestEnv, args: &[&str]) -> String {
    let out = env.api_command(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_audited_change_is_listed_newest_first_with_the_acting_key() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let ops = env.create_operator_key("ops");
    let acme = env.create_key("acme");
    let globex = api_command_ok(&env, &["keys", "create", "--tenant", "globex"]);
    api_command_ok(&env, &["keys", "revoke", &globex[..12]]);

    // The operator's changes.
    for action in ["pause", "resume"] {
        let (status, body) = api
            .post(&ops, &format!("/v1/queues/agent/{action}"), &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let budget = json!({"monthly_tokens": 1000});
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            &ops,
            "/v1/tenants/acme/budget",
            Some(&budget),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .call(
            reqwest::Method::PUT,
            &ops,
            "/v1/tenants/acme/rate-limits",
            Some(&json!({"submit": "500/s"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A tenant's changes.
    let noop = json!({"kind": "executor.run", "tool": "noop"});
    let schedule = json!({"name": "daily", "cron": "0 0 7 * * *", "target": noop});
    let (status, body) = api.post(&acme, "/v1/schedules", &schedule).await;
    let schedule_id = created_id(status, &body);
    let path = format!("/v1/schedules/{schedule_id}");
    let renamed = json!({"name": "daily noop", "cron": "0 0 8 * * *", "target": noop});
    let (status, body) = api
        .call(reqwest::Method::PUT, &acme, &path, Some(&renamed))
        .await;
    assert_eq!(status, 200, "{body}");
    // Each twice: the second changes nothing, and is not recorded.
    for action in ["pause", "pause", "resume", "resume"] {
        let (status, body) = api
            .post(&acme, &format!("{path}/{action}"), &json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = api.delete(&acme, &path).await;
    assert_eq!(status, 204, "{body}");

    let github = json!({"provider": "github", "token": GITHUB_TOKEN});
    let (status, body) = api.post(&acme, "/v1/connectors", &github).await;
    let connector_id = created_id(status, &body);
    let path = format!("/v1/connectors/{connector_id}");
    let (status, body) = api
        .patch(&acme, &path, &json!({"name": "Work GitHub"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.delete(&acme, &path).await;
    assert_eq!(status, 204, "{body}");

    let provider = json!({"base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini",
                          "api_key": LLM_KEY});
    let (status, body) = api
        .call(reqwest::Method::PUT, &acme, "/v1/llm", Some(&provider))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.delete(&acme, "/v1/llm").await;
    assert_eq!(status, 204, "{body}");

    let mut tomorrow = noop.clone();
    tomorrow["run_at"] = json!(chrono::Utc::now() + chrono::Duration::days(1));
    let job = api.submit(&acme, tomorrow).await;
    let (status, body) = api
        .post(&acme, &format!("/v1/jobs/{job}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post(&acme, &format!("/v1/jobs/{job}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    let events = all_events(&api, &ops, "", 500).await;
    // Who, what, to what: oldest first. The command line acts as `cli:<user>`.
    let seen: Vec<[String; 3]> = events
        .iter()
        .rev()
        .map(|e| {
            let actor = e["actor"].as_str().unwrap();
            let actor = if actor.starts_with("cli") {
                "cli"
            } else {
                actor
            };
            [
                actor,
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
            ]
            .map(str::to_owned)
        })
        .collect();
    let (ops_key, acme_key, globex_key) = (shown(&ops), shown(&acme), shown(&globex));
    let (ops_key, acme_key, globex_key) = (&*ops_key, &*acme_key, &*globex_key);
    let job = job.to_string();
    let (schedule_id, connector_id, job) = (&*schedule_id, &*connector_id, &*job);
    let expected: Vec<[String; 3]> = [
        ["cli", "key.created", ops_key],
        ["cli", "key.created", acme_key],
        ["cli", "key.created", globex_key],
        ["cli", "key.revoked", globex_key],
        [ops_key, "queue.paused", "agent"],
        [ops_key, "queue.resumed", "agent"],
        [ops_key, "budget.changed", "acme"],
        [ops_key, "rate_limits.changed", "acme"],
        [acme_key, "schedule.created", schedule_id],
        [acme_key, "schedule.updated", schedule_id],
        [acme_key, "schedule.paused", schedule_id],
        [acme_key, "schedule.resumed", schedule_id],
        [acme_key, "schedule.deleted", schedule_id],
        [acme_key, "connector.created", connector_id],
        [acme_key, "connector.updated", connector_id],
        [acme_key, "connector.deleted", connector_id],
        [acme_key, "llm_provider.set", "acme"],
        [acme_key, "llm_provider.deleted", "acme"],
        [acme_key, "job.retried", job],
    ]
    .into_iter()
    .map(|row| row.map(str::to_owned))
    .collect();
    assert_eq!(seen, expected);
    let ids: Vec<Uuid> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");

    // Whose, on whom, and what changed, but no secret.
    let find = |action: &str| events.iter().find(|e| e["action"] == action).unwrap();
    let budget = find("budget.changed");
    assert_eq!(budget["detail"], json!({"old": null, "new": 1000}));
    assert_eq!(
        (&budget["tenant"], &budget["actor_tenant"]),
        (&json!("acme"), &json!("ops"))
    );
    assert_eq!(
        find("rate_limits.changed")["detail"],
        json!({"submit": "500/s:1000", "read": null, "stream": null})
    );
    let paused = find("queue.paused");
    assert!(paused["tenant"].is_null(), "{paused}");
    let revoked = find("key.revoked");
    assert_eq!(revoked["tenant"], "globex");
    assert!(revoked["actor_tenant"].is_null(), "{revoked}");
    assert_eq!(
        find("connector.updated")["detail"],
        json!({"name": "Work GitHub", "changed": ["name"]})
    );
    assert_eq!(find("job.retried")["detail"]["kind"], "executor.run");
    let text = serde_json::to_string(&events).unwrap();
    for secret in [GITHUB_TOKEN, LLM_KEY, &acme, &ops, &globex] {
        assert!(!text.contains(secret), "an audit event shows a secret");
    }

    // A small page size follows the cursor to the end, without repeats.
    let paged = all_events(&api, &ops, "", 4).await;
    assert_eq!(paged, events);

    // Filters.
    let acme_events = all_events(&api, &ops, "&tenant=acme", 500).await;
    assert!(acme_events.iter().all(|e| e["tenant"] == "acme"));
    // Its key, budget and rate limits; schedules; connectors; LLM provider; retry.
    assert_eq!(acme_events.len(), 3 + 5 + 3 + 2 + 1, "{acme_events:#?}");
    let pauses = all_events(&api, &ops, "&action=queue.paused", 500).await;
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0]["target"], "agent");
    let since =
        serde_urlencoded::to_string([("since", find("schedule.created")["at"].as_str())]).unwrap();
    let recent = all_events(&api, &ops, &format!("&{since}"), 500).await;
    assert_eq!(recent.len(), 11, "{recent:#?}");
    assert_eq!(recent.last().unwrap()["action"], "schedule.created");
    let (status, body) = api.get(&ops, "/v1/audit?action=queue.exploded").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.get(&ops, "/v1/audit?tenant=nobody").await;
    assert_eq!(status, 404, "{body}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_operators_read_the_log_and_a_refused_change_leaves_no_event() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let ops = env.create_operator_key("ops");
    let acme = env.create_key("acme");
    let reader = api_command_ok(
        &env,
        &["keys", "create", "--tenant", "acme", "--scope", "read"],
    );
    for key in [&acme, &reader] {
        let (status, body) = api.get(key, "/v1/audit").await;
        assert_eq!(status, 403, "{body}");
    }

    let mut tomorrow = json!({"kind": "executor.run", "tool": "noop"});
    tomorrow["run_at"] = json!(chrono::Utc::now() + chrono::Duration::days(1));
    let job = api.submit(&acme, tomorrow).await;
    let refused = [
        // Scheduled, not dead or cancelled: nothing to retry.
        (
            reqwest::Method::POST,
            &acme,
            format!("/v1/jobs/{job}/retry"),
            409,
        ),
        // Not an operator's key.
        (
            reqwest::Method::POST,
            &acme,
            "/v1/queues/agent/pause".into(),
            403,
        ),
        (reqwest::Method::POST, &reader, "/v1/schedules".into(), 403),
        (
            reqwest::Method::PUT,
            &ops,
            "/v1/tenants/nobody/budget".into(),
            404,
        ),
        (
            reqwest::Method::DELETE,
            &acme,
            format!("/v1/schedules/{}", Uuid::now_v7()),
            404,
        ),
        (
            reqwest::Method::DELETE,
            &acme,
            format!("/v1/connectors/{}", Uuid::now_v7()),
            404,
        ),
        (reqwest::Method::DELETE, &acme, "/v1/llm".into(), 404),
    ];
    for (method, key, path, expected) in refused {
        let body = json!({"monthly_tokens": 5, "name": "n", "cron": "0 0 7 * * *",
                          "target": {"kind": "executor.run", "tool": "noop"}});
        let (status, answer) = api.call(method, key, &path, Some(&body)).await;
        assert_eq!(status, expected, "{path}: {answer}");
    }
    // Resuming a running queue changes nothing.
    let (status, body) = api.post(&ops, "/v1/queues/agent/resume", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let out = env.api_command(&["keys", "revoke", "tfk_00000000"]);
    assert!(!out.status.success());

    let events = all_events(&api, &ops, "", 500).await;
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.created"; 3], "{events:#?}");
    env.finish().await;
}

/// Audit events are kept as long as the longest-kept finished jobs (dead ones, here 3
/// hours): the leader deletes older ones, and keeps one past the shorter retentions only.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_deletes_audit_events_past_the_longest_job_retention() {
    let mut env = TestEnv::new().await;
    env.create_key("acme");
    env.create_key("globex");
    env.create_key("initech");
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM audit_events ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    for (id, ago) in [(ids[0], "4 hours"), (ids[1], "150 minutes")] {
        sqlx::query("UPDATE audit_events SET at = now() - $2::interval WHERE id = $1")
            .bind(id)
            .bind(ago)
            .execute(&env.pool)
            .await
            .unwrap();
    }
    let pool = env.pool.clone();
    let kept = || async {
        sqlx::query_scalar::<_, Uuid>("SELECT id FROM audit_events ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap()
    };

    env.start_worker_env(
        &[],
        &[
            ("TASKFLEET_RETENTION_SUCCEEDED", "1h"),
            ("TASKFLEET_RETENTION_CANCELLED", "2h"),
            ("TASKFLEET_RETENTION_DEAD", "3h"),
        ],
    );
    wait_until(
        Duration::from_secs(30),
        "the event past the longest retention is gone",
        || async { kept().await.len() == 2 },
    )
    .await;
    assert_eq!(kept().await, ids[1..]);
    env.finish().await;
}
