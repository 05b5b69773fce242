//! Every executor tool, submitted through the API and run by a real worker, leaves the right
//! result in the ledger.

use std::time::Duration;

use taskfleet_tests::{TestEnv, json};

#[tokio::test]
async fn each_executor_tool_stores_its_result() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    env.start_worker(&[]);
    let key = env.create_key("acme");
    let within = Duration::from_secs(30);

    let noop = api
        .submit(&key, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    let job = api.wait_finished(&key, noop, within).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({}));
    assert_eq!(job["attempt"], 1);

    let sleep = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 300}}),
        )
        .await;
    let job = api.wait_finished(&key, sleep, within).await;
    assert_eq!(job["result"], json!({"slept_ms": 300}), "{job}");
    let started =
        chrono::DateTime::parse_from_rfc3339(job["started_at"].as_str().unwrap()).unwrap();
    let finished =
        chrono::DateTime::parse_from_rfc3339(job["finished_at"].as_str().unwrap()).unwrap();
    assert!(
        finished - started >= chrono::Duration::milliseconds(300),
        "{job}"
    );

    let markdown = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "markdown.format",
                   "input": "Setup\n=====\n\n* install   it\n+ run it\n\n| a | b |\n|-|-|\n| 1 | 2 |\n"}),
        )
        .await;
    let job = api.wait_finished(&key, markdown, within).await;
    assert_eq!(
        job["result"]["markdown"],
        "# Setup\n\n- install   it\n\n<!-- end list -->\n\n- run it\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n",
        "{job}"
    );

    let changelog = api
        .submit(
            &key,
            json!({"kind": "executor.run", "tool": "changelog.generate",
                   "input": "1a2b3c4 feat(api): batch submission\n9f8e7d6 fix!: reject empty batches\ndocs: readme",
                   "args": {"version": "0.2.0", "date": "2026-11-22"}}),
        )
        .await;
    let job = api.wait_finished(&key, changelog, within).await;
    assert_eq!(job["result"]["commits"], 3, "{job}");
    assert_eq!(job["result"]["breaking"], 1);
    assert_eq!(
        job["result"]["markdown"],
        "## 0.2.0 (2026-11-22)\n\n### ⚠ Breaking Changes\n\n- reject empty batches (9f8e7d6)\n\n\
         ### Features\n\n- **api:** batch submission (1a2b3c4)\n\n\
         ### Bug Fixes\n\n- reject empty batches (9f8e7d6)\n\n\
         ### Documentation\n\n- readme\n"
    );

    // Every lifecycle step left its event, in order.
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event FROM all_job_events WHERE job_id = $1 ORDER BY id")
            .bind(noop)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        events,
        [
            "job_enqueued",
            "job_dispatched",
            "job_started",
            "job_succeeded"
        ]
    );
    env.finish().await;
}

#[tokio::test]
async fn scheduled_jobs_wait_for_run_at() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    env.start_worker(&[]);
    let key = env.create_key("acme");
    let run_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (status, job) = api
        .post(
            &key,
            "/v1/jobs",
            &json!({"kind": "executor.run", "tool": "noop", "run_at": run_at}),
        )
        .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["state"], "scheduled");
    let id = job["id"].as_str().unwrap().parse().unwrap();
    let job = api.wait_finished(&key, id, Duration::from_secs(30)).await;
    let started =
        chrono::DateTime::parse_from_rfc3339(job["started_at"].as_str().unwrap()).unwrap();
    assert!(
        started >= run_at,
        "started {started} before run_at {run_at}"
    );
    env.finish().await;
}
