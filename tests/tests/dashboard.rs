//! The dashboard in a real browser (headless Chromium through ChromeDriver): sign in, watch a
//! job submitted through the API reach `succeeded` without reloading, retry a dead job with
//! its button and watch it succeed, see the workers and pause a queue.

use std::time::Duration;

use serde_json::Value;
use taskfleet_tests::{TestEnv, browser::Browser, json, wait_until};

const WAIT: Duration = Duration::from_secs(20);

async fn executor_paused(api: &taskfleet_tests::Api, key: &str) -> bool {
    let (_, list) = api.get(key, "/v1/queues").await;
    list["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "executor")
        .map(|q| q["paused"] == true)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_follows_jobs_live_and_its_buttons_work() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_FAULT_INJECTION", "true")])
        .await;
    env.start_worker(&["--fault-injection"]);
    let ops = env.create_operator_key("ops");
    let acme = env.create_key("acme");
    let browser = Browser::start().await;

    browser.sign_in(&api.base, &ops).await;
    browser.wait_text("#whoami", "ops · operator", WAIT).await;
    // Set once; still there at the end means the page never reloaded.
    browser.eval("window.__loadedOnce = true").await;

    // A job submitted elsewhere appears and reaches succeeded on its own.
    let id = api
        .submit(
            &acme,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 1500}}),
        )
        .await;
    let row = format!("#jobs-table tr[data-job-id=\"{id}\"]");
    browser.wait_for(&row, WAIT).await;
    browser
        .wait_text(&format!("{row} td.state"), "succeeded", WAIT)
        .await;

    // A dead job: open it, press Retry, and watch its timeline reach job_succeeded.
    let dead = api
        .submit(
            &acme,
            json!({"kind": "executor.run", "tool": "fault", "max_attempts": 1,
                   "args": {"mode": "fail", "times": 1}}),
        )
        .await;
    let dead_row = format!("#jobs-table tr[data-job-id=\"{dead}\"]");
    browser
        .wait_text(&format!("{dead_row} td.state"), "dead", WAIT)
        .await;
    browser.click(&dead_row).await;
    browser.wait_text("#job-state", "dead", WAIT).await;
    browser.wait_for("#job-errors li", WAIT).await;
    browser
        .wait_for("#job-events li[data-event=\"job_dead\"]", WAIT)
        .await;
    browser.click("#job-retry").await;
    browser.wait_text("#job-state", "succeeded", WAIT).await;
    browser
        .wait_for("#job-events li[data-event=\"job_retried\"]", WAIT)
        .await;
    browser
        .wait_for("#job-events li[data-event=\"job_succeeded\"]", WAIT)
        .await;
    browser
        .wait_text(&format!("{dead_row} td.state"), "succeeded", WAIT)
        .await;
    let (_, job) = api.get(&acme, &format!("/v1/jobs/{dead}")).await;
    assert_eq!(
        (job["state"].as_str(), job["attempt"].as_i64()),
        (Some("succeeded"), Some(2))
    );
    let shot = browser.screenshot("dashboard-job-detail").await;
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "{}",
        shot.display()
    );
    println!("screenshot: {}", shot.display());
    browser.click("#job-close").await;

    // Workers: the one worker, marked leader.
    browser.click("button[data-tab=\"workers\"]").await;
    browser
        .wait_for("#workers-table tr[data-worker]", WAIT)
        .await;
    browser.wait_for("#workers-table span.leader", WAIT).await;

    // Queues: pause and resume the executor queue with its button.
    browser.click("button[data-tab=\"queues\"]").await;
    let toggle = "#queues-table tr[data-queue=\"executor\"] button.pause-toggle";
    browser.wait_text(toggle, "Pause", WAIT).await;
    browser.click(toggle).await;
    browser.wait_text(toggle, "Resume", WAIT).await;
    assert!(executor_paused(&api, &ops).await);
    browser.screenshot("dashboard-queues").await;
    browser.click(toggle).await;
    browser.wait_text(toggle, "Pause", WAIT).await;
    assert!(!executor_paused(&api, &ops).await);

    // Audit: that resume is the newest change, made with the operator's key.
    browser.click("button[data-tab=\"audit\"]").await;
    browser
        .wait_text_containing(
            "#audit-table tbody tr:first-child",
            &["queue.resumed", "executor", &ops[..12]],
            WAIT,
        )
        .await;

    // Schedules: the next firing and the firings so far.
    let (status, schedule) = api
        .post(
            &acme,
            "/v1/schedules",
            &json!({"name": "every-second", "cron": "* * * * * *",
                    "target": {"kind": "executor.run", "tool": "noop"}}),
        )
        .await;
    assert_eq!(status, 201, "{schedule}");
    browser.click("button[data-tab=\"schedules\"]").await;
    let schedule_row = format!(
        "#schedules-table tr[data-schedule-id=\"{}\"]",
        schedule["id"].as_str().unwrap()
    );
    browser.wait_for(&schedule_row, WAIT).await;
    browser
        .wait_for(&format!("{schedule_row} a.job-link"), WAIT)
        .await;

    assert_eq!(
        browser.eval("return window.__loadedOnce === true").await,
        Value::Bool(true)
    );

    // A tenant key sees its own jobs and no operator controls.
    browser.click("#logout").await;
    browser.sign_in(&api.base, &acme).await;
    browser.wait_text("#whoami", "acme · tenant", WAIT).await;
    for tab in ["workers", "audit"] {
        let hidden = format!("return document.querySelector('button[data-tab=\"{tab}\"]').hidden");
        assert_eq!(browser.eval(&hidden).await, Value::Bool(true), "{tab}");
    }
    wait_until(WAIT, "the tenant's jobs are listed", || async {
        browser.find(&row).await.is_some()
    })
    .await;
    drop(browser);
    env.finish().await;
}
