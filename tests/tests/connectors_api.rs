//! `/v1/connectors` as clients use it, and what it refuses: bad input is a clear 4xx, another
//! tenant's connector is a 404, a connector without credentials cannot be synced; deleting
//! one destroys its credentials and keeps its tasks; credentials never show up in an answer,
//! a log line, a job or an event; keys rotate with `keys reseal`; and no process starts
//! without a key to seal with.

use std::time::Duration;

use serde_json::Value;
use taskfleet_tests::{
    TEST_ENCRYPTION_KEY, TestEnv, connector_fleet::ConnectorFleet, fake_providers::FakeProvider,
    json, wait_until,
};

const WITHIN: Duration = Duration::from_secs(30);

async fn refused(fleet: &ConnectorFleet, key: &str, body: Value) -> (u16, String) {
    let (status, answer) = fleet.api.post(key, "/v1/connectors", &body).await;
    assert!((400..500).contains(&status), "{body} -> {status} {answer}");
    assert!(answer["error"].is_string(), "{answer}");
    (
        status,
        answer["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn bad_input_is_refused_and_another_tenants_connector_is_not_found() {
    let mut fleet = ConnectorFleet::start(&[], &[]).await;
    let key = fleet.key.clone();
    let site = fleet.fake.site_url();
    let cases = [
        (json!({"provider": "slack"}), "slack"),
        (
            json!({"provider": "gmail", "token": "ya29.x"}),
            "OAuth only",
        ),
        (
            json!({"provider": "jira", "token": "t", "config": {"site_url": site}}),
            "`email`",
        ),
        (
            json!({"provider": "jira", "token": "t", "email": "a@b.c"}),
            "site_url",
        ),
        (
            json!({"provider": "jira", "token": "t", "email": "a@b.c",
                   "config": {"site_url": "http://acme.atlassian.net"}}),
            "https",
        ),
        (
            json!({"provider": "jira", "token": "t", "email": "a@b.c",
                   "config": {"site_url": "https://intranet.acme.test"}}),
            "not an Atlassian Cloud site",
        ),
        (
            json!({"provider": "github", "token": "t", "email": "a@b.c"}),
            "no `email`",
        ),
        (
            json!({"provider": "github", "config": {"site_url": "https://x.test"}}),
            "Jira and Confluence",
        ),
        (json!({"provider": "github", "token": ""}), "token"),
    ];
    for (body, expected) in cases {
        let (status, message) = refused(&fleet, &key, body.clone()).await;
        assert_eq!(status, 422, "{body}: {message}");
        assert!(
            message.contains(expected),
            "{body}: `{message}` lacks `{expected}`"
        );
    }
    fleet.fake.add_github_pat("ghp_good");
    fleet.fake.seed(FakeProvider::Github, 3);
    let github = fleet
        .connect_token(json!({"provider": "github", "token": "ghp_good"}))
        .await;
    assert_eq!(github["name"], "GitHub", "named after its provider");
    let (_, pending) = fleet
        .api
        .post(&key, "/v1/connectors", &json!({"provider": "gdrive"}))
        .await;
    let (_, second) = fleet
        .api
        .post(&key, "/v1/connectors", &json!({"provider": "gdrive"}))
        .await;
    assert_eq!(pending["name"], "Google Drive");
    assert_eq!(
        second["name"], "Google Drive 2",
        "numbered when the name is taken"
    );
    let (status, _) = refused(
        &fleet,
        &key,
        json!({"provider": "github", "token": "ghp_good", "name": "GitHub"}),
    )
    .await;
    assert_eq!(status, 409);
    let id = github["id"].as_str().unwrap().to_owned();
    fleet.wait_ingest(&id, WITHIN).await;

    // Another tenant sees none of it.
    let globex = fleet.env.create_key("globex");
    for (method, path) in [
        ("GET", format!("/v1/connectors/{id}")),
        ("PATCH", format!("/v1/connectors/{id}")),
        ("DELETE", format!("/v1/connectors/{id}")),
        ("POST", format!("/v1/connectors/{id}/sync")),
        ("POST", format!("/v1/connectors/{id}/test")),
        ("POST", format!("/v1/connectors/{id}/authorize")),
    ] {
        let (status, answer) = fleet
            .api
            .call(
                method.parse().unwrap(),
                &globex,
                &path,
                Some(&json!({"name": "mine"})),
            )
            .await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (status, answer) = fleet
        .api
        .post(
            &globex,
            "/v1/jobs",
            &json!({"kind": "ingest.connector", "connector_id": id}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = fleet
        .api
        .post(
            &globex,
            "/v1/jobs/batch",
            &json!({"jobs": [{"kind": "executor.run", "tool": "noop"},
                               {"kind": "test.connector", "connector_id": id}]}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().starts_with("jobs[1]: "),
        "{answer}"
    );
    let (_, tasks) = fleet.api.get(&globex, "/v1/tasks").await;
    assert_eq!(tasks["tasks"], json!([]));
    let (_, list) = fleet.api.get(&globex, "/v1/connectors").await;
    assert_eq!(list["connectors"], json!([]));

    // The owner submits jobs and schedules naming it; not before it is connected.
    let (status, job) = fleet
        .api
        .post(
            &key,
            "/v1/jobs",
            &json!({"kind": "test.connector", "connector_id": id}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    let (status, schedule) = fleet
        .api
        .post(
            &key,
            "/v1/schedules",
            &json!({"name": "hourly-github", "cron": "0 0 * * * *",
              "target": {"kind": "ingest.connector", "connector_id": id}}),
        )
        .await;
    assert_eq!(status, 201, "{schedule}");
    let (status, answer) = fleet
        .api
        .post(
            &key,
            "/v1/schedules",
            &json!({"name": "nothing", "cron": "0 0 * * * *",
              "target": {"kind": "ingest.connector", "connector_id": uuid::Uuid::now_v7()}}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("target: no connector")
    );
    let pending_id = pending["id"].as_str().unwrap();
    let (status, answer) = fleet
        .api
        .post(
            &key,
            &format!("/v1/connectors/{pending_id}/sync"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("pending_auth"),
        "{answer}"
    );

    // Renamed; a GitHub connector has no site.
    let (status, patched) = fleet
        .api
        .patch(
            &key,
            &format!("/v1/connectors/{id}"),
            &json!({"name": "work GitHub"}),
        )
        .await;
    assert_eq!(
        (status, &patched["name"]),
        (200, &json!("work GitHub")),
        "{patched}"
    );
    let (status, answer) = fleet
        .api
        .patch(
            &key,
            &format!("/v1/connectors/{id}"),
            &json!({"config": {"site_url": "https://x.test"}}),
        )
        .await;
    assert_eq!(status, 422, "{answer}");

    // Without an OAuth client for a provider, OAuth is refused and says what to set.
    let bare = fleet.env.start_api(&[]).await;
    let (status, answer) = bare
        .post(&key, "/v1/connectors", &json!({"provider": "github"}))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("TASKFLEET_GITHUB_CLIENT_ID"),
        "{answer}"
    );

    // Deleted: its credentials go; its tasks stay, from a removed source; a sync that was
    // waiting for it ends dead, saying why.
    fleet.env.signal(1, "STOP");
    let (_, waiting) = fleet
        .api
        .post(&key, &format!("/v1/connectors/{id}/sync"), &json!({}))
        .await;
    let (status, _) = fleet
        .api
        .delete(&key, &format!("/v1/connectors/{id}"))
        .await;
    assert_eq!(status, 204);
    fleet.env.signal(1, "CONT");
    let job = fleet
        .api
        .wait_finished(
            &key,
            waiting["id"].as_str().unwrap().parse().unwrap(),
            WITHIN,
        )
        .await;
    assert_eq!(job["state"], "dead", "{job}");
    assert!(job["error"].as_str().unwrap().contains("deleted"), "{job}");
    let (status, _) = fleet.api.get(&key, &format!("/v1/connectors/{id}")).await;
    assert_eq!(status, 404);
    let tasks = fleet.tasks("github").await;
    assert_eq!(tasks.len(), 3);
    assert!(
        tasks
            .iter()
            .all(|t| t["source_removed_at"].is_string() && t["connector_id"].is_null()),
        "{tasks:?}"
    );
    fleet.finish().await;
}

#[tokio::test]
async fn credentials_never_appear_in_answers_logs_jobs_or_events() {
    // Verbose logs: what a person debugging the fleet would turn on.
    let mut fleet = ConnectorFleet::start_logged(&[], &[("RUST_LOG", "debug,sqlx=warn")]).await;
    fleet.fake.set_github_expiring_tokens(true);
    fleet.fake.seed(FakeProvider::Github, 2);
    fleet.fake.seed(FakeProvider::Confluence, 2);
    fleet
        .fake
        .add_atlassian_api_token("ana@acme.test", "atl_secret_api_token");
    let github = fleet.connect_oauth("github").await;
    let confluence = fleet
        .connect_token(json!({"provider": "confluence", "token": "atl_secret_api_token",
                              "email": "ana@acme.test", "config": {"site_url": fleet.fake.site_url()}}))
        .await;
    for connector in [&github, &confluence] {
        let job = fleet
            .wait_ingest(connector["id"].as_str().unwrap(), WITHIN)
            .await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    // A refresh, so the refreshed tokens are among those looked for.
    fleet.fake.expire_access_tokens();
    let github_id = github["id"].as_str().unwrap();
    let old = fleet.credentials(github_id).await;
    let job = fleet.run(&format!("/v1/connectors/{github_id}/test")).await;
    assert_eq!(job["result"]["ok"], true, "{job}");
    let new = fleet.credentials(github_id).await;
    assert_ne!(old["access_token"], new["access_token"]);
    let secrets: Vec<String> = [old, new]
        .iter()
        .flat_map(|c| [c["access_token"].clone(), c["refresh_token"].clone()])
        .filter_map(|v| v.as_str().map(str::to_owned))
        .chain(["atl_secret_api_token".to_owned()])
        .collect();
    assert_eq!(secrets.len(), 5, "{secrets:?}");

    let mut seen = String::new();
    for path in [
        "/v1/connectors",
        "/v1/jobs?limit=500",
        "/v1/tasks?limit=500",
    ] {
        seen.push_str(&fleet.api.get(&fleet.key, path).await.1.to_string());
    }
    for connector in [&github, &confluence] {
        let path = format!("/v1/connectors/{}", connector["id"].as_str().unwrap());
        seen.push_str(&fleet.api.get(&fleet.key, &path).await.1.to_string());
    }
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', payload::text, result::text, error, attempt_errors::text) FROM jobs
         UNION ALL SELECT details::text FROM all_job_events
         UNION ALL SELECT concat_ws(' ', config::text, cursor::text, status_message,
                                    last_test_message, credentials) FROM connectors",
    )
    .fetch_all(&fleet.env.pool)
    .await
    .unwrap();
    seen.push_str(&rows.join("\n"));
    let logs = fleet.env.logs();
    assert!(
        logs.contains("access refreshed"),
        "the logs are verbose enough to tell"
    );
    seen.push_str(&logs);
    for secret in &secrets {
        assert!(!seen.contains(secret.as_str()), "`{secret}` leaked");
    }
    fleet.env.signal(1, "KILL");
    fleet.finish().await;
}

#[tokio::test]
async fn credentials_move_to_a_new_key_with_keys_reseal() {
    const NEW_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let mut fleet = ConnectorFleet::start(&[], &[]).await;
    fleet.fake.add_github_pat("ghp_good");
    let github = fleet
        .connect_token(json!({"provider": "github", "token": "ghp_good"}))
        .await;
    let id = github["id"].as_str().unwrap().to_owned();
    fleet.wait_ingest(&id, WITHIN).await;

    let rotated = [
        ("TASKFLEET_ENCRYPTION_KEY", NEW_KEY),
        ("TASKFLEET_ENCRYPTION_KEYS_OLD", TEST_ENCRYPTION_KEY),
    ];
    let out = fleet.env.api_command_env(&["keys", "reseal"], &rotated);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("sealed 1 connectors' credentials anew"),
        "{said}"
    );
    let again = fleet.env.api_command_env(&["keys", "reseal"], &rotated);
    assert!(String::from_utf8_lossy(&again.stderr).contains("sealed 0"));

    // A worker holding only the new key opens them; one holding only the old key cannot.
    fleet.env.signal(1, "KILL");
    fleet.start_worker(&[], &[("TASKFLEET_ENCRYPTION_KEY", NEW_KEY)]);
    let job = fleet.run(&format!("/v1/connectors/{id}/test")).await;
    assert_eq!(job["result"]["ok"], true, "{job}");
    fleet.finish().await;
}

#[tokio::test]
async fn no_process_starts_without_a_key_to_seal_with() {
    let mut env = TestEnv::new().await;
    env.capture_logs();
    let (api, _) = env.spawn_api(&[("TASKFLEET_ENCRYPTION_KEY", "")]);
    let worker = env.start_worker_env(&[], &[("TASKFLEET_ENCRYPTION_KEY", "c0ffee")]);
    wait_until(WITHIN, "both refuse to start", || {
        let stopped = !env.is_running(api) && !env.is_running(worker);
        async move { stopped }
    })
    .await;
    let logs = env.logs();
    assert!(
        logs.contains("TASKFLEET_ENCRYPTION_KEY is not set"),
        "{logs}"
    );
    assert!(logs.contains("64 hex characters"), "{logs}");
    assert!(logs.contains("openssl rand -hex 32"), "{logs}");
    env.finish().await;
}
