//! Tests of connections, and what provider failures do to jobs: `test-all` streams one result
//! per connector as each lands; rate limits become retries at the provider's own delay; 5xx
//! answers are retried inside the call; timeouts are named; the circuit breaker opens after
//! failures in a row, fails calls fast, and closes after a successful probe.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use taskfleet_tests::{
    connector_fleet::ConnectorFleet,
    fake_providers::{FakeProvider, FaultRule},
    free_port, json, prometheus, wait_until,
};

const WITHIN: Duration = Duration::from_secs(30);

async fn test_connector(fleet: &ConnectorFleet, id: &str) -> Value {
    let job = fleet.run(&format!("/v1/connectors/{id}/test")).await;
    assert_eq!(
        job["state"], "succeeded",
        "a refusal is the test's answer: {job}"
    );
    job["result"].clone()
}

#[tokio::test]
async fn test_all_streams_one_result_per_connector_as_each_lands() {
    let fleet = ConnectorFleet::start(&[], &[]).await;
    fleet.fake.add_github_pat("ghp_good");
    fleet
        .fake
        .add_atlassian_api_token("ana@acme.test", "atl_good");
    let good = fleet
        .connect_token(json!({"provider": "github", "name": "good", "token": "ghp_good"}))
        .await;
    let bad = fleet
        .connect_token(json!({"provider": "github", "name": "bad", "token": "ghp_revoked"}))
        .await;
    let jira = fleet
        .connect_token(
            json!({"provider": "jira", "token": "atl_good", "email": "ana@acme.test",
                              "config": {"site_url": fleet.fake.site_url()}}),
        )
        .await;
    // Waiting for its OAuth callback: nothing to test yet.
    let (_, pending) = fleet
        .api
        .post(&fleet.key, "/v1/connectors", &json!({"provider": "gmail"}))
        .await;
    assert_eq!(pending["status"], "pending_auth");

    let (status, stream) = fleet
        .api
        .post_sse(&fleet.key, "/v1/connectors/test-all")
        .await;
    assert_eq!(status, 200);
    let messages = stream.unwrap().collect(WITHIN).await;
    let names: Vec<&str> = messages.iter().map(|m| m.event.as_str()).collect();
    assert_eq!(&names[..3], ["connecting"; 3], "{names:?}");
    assert_eq!(names.last(), Some(&"done"));
    assert_eq!(messages.last().unwrap().data["ok"], 2);
    assert_eq!(messages.last().unwrap().data["error"], 1);
    let result_of = |connector: &Value| {
        messages
            .iter()
            .find(|m| m.event != "connecting" && m.data["connector_id"] == connector["id"])
            .unwrap_or_else(|| panic!("no result for {connector}"))
    };
    assert_eq!(result_of(&good).event, "ok");
    assert_eq!(result_of(&good).data["message"], "connected as octo-demo");
    assert_eq!(result_of(&jira).event, "ok");
    let refused = result_of(&bad);
    assert_eq!(refused.event, "error");
    assert_eq!(refused.data["provider"], "github");
    assert_eq!(
        refused.data["message"],
        "GitHub rejected the token: replace the token"
    );
    assert!(
        messages
            .iter()
            .all(|m| m.data["connector_id"] != pending["id"]),
        "the pending connector is not tested"
    );
    // The connectors remember their results.
    let (_, after) = fleet
        .api
        .get(
            &fleet.key,
            &format!("/v1/connectors/{}", bad["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(after["status"], "reauth_required", "{after}");
    assert_eq!(after["last_test"]["ok"], false);

    // A new token mends it.
    let bad_id = bad["id"].as_str().unwrap();
    let (status, patched) = fleet
        .api
        .patch(
            &fleet.key,
            &format!("/v1/connectors/{bad_id}"),
            &json!({"token": "ghp_good"}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["status"], "connected", "{patched}");
    let cursor_reset: bool =
        sqlx::query_scalar("SELECT cursor IS NULL FROM connectors WHERE id = $1::uuid")
            .bind(bad_id)
            .fetch_one(&fleet.env.pool)
            .await
            .unwrap();
    assert!(
        cursor_reset,
        "a new token may reach another account: sweeps start over"
    );
    assert_eq!(patched["status_message"], Value::Null);
    let result = test_connector(&fleet, bad_id).await;
    assert_eq!(result["ok"], true, "{result}");

    // Without asking for a stream: 202 and the tests' jobs.
    let (status, enqueued) = fleet
        .api
        .post(&fleet.key, "/v1/connectors/test-all", &json!({}))
        .await;
    assert_eq!(status, 202, "{enqueued}");
    assert_eq!(enqueued["tests"].as_array().unwrap().len(), 3, "{enqueued}");
    fleet.finish().await;
}

#[tokio::test]
async fn rate_limits_retry_at_the_providers_delay_and_5xx_is_retried_in_the_call() {
    let fleet = ConnectorFleet::start(&[], &[("TASKFLEET_PROVIDER_TIMEOUT_SECS", "1")]).await;
    fleet.fake.seed(FakeProvider::Jira, 3);
    fleet
        .fake
        .add_atlassian_api_token("ana@acme.test", "atl_good");
    // The first search answers 429 with Retry-After: 2.
    fleet.fake.fail_next(FaultRule::rate_limited(
        FakeProvider::Jira,
        "/search/jql",
        2,
        1,
    ));
    let jira = fleet
        .connect_token(
            json!({"provider": "jira", "token": "atl_good", "email": "ana@acme.test",
                              "config": {"site_url": fleet.fake.site_url()}}),
        )
        .await;
    let job = fleet
        .wait_ingest(jira["id"].as_str().unwrap(), WITHIN)
        .await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2, "{job}");
    let failure = &job["attempt_errors"][0];
    assert_eq!(
        failure["error"], "Jira rate limit reached: retry in 2 s",
        "{job}"
    );
    let job_id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let retry_at: String = sqlx::query_scalar(
        "SELECT details ->> 'retry_at' FROM all_job_events
         WHERE job_id = $1 AND event = 'job_retry_scheduled'",
    )
    .bind(job_id)
    .fetch_one(&fleet.env.pool)
    .await
    .unwrap();
    let failed_at: DateTime<Utc> = failure["at"].as_str().unwrap().parse().unwrap();
    let delay = retry_at.parse::<DateTime<Utc>>().unwrap() - failed_at;
    assert!(
        (1500..=2600).contains(&delay.num_milliseconds()),
        "the provider's 2 s, not the backoff's: {delay}"
    );

    // GitHub's exhausted primary limit: a 403 whose reset (in whole epoch seconds) is about
    // 3 s away.
    fleet.fake.add_github_pat("ghp_good");
    let github = fleet
        .connect_token(json!({"provider": "github", "token": "ghp_good"}))
        .await;
    let github_id = github["id"].as_str().unwrap().to_owned();
    fleet.wait_ingest(&github_id, WITHIN).await;
    fleet
        .fake
        .fail_next(FaultRule::rate_limited(FakeProvider::Github, "/user", 3, 1));
    let result = test_connector(&fleet, &github_id).await;
    assert_eq!(result["ok"], false);
    let message = result["message"].as_str().unwrap();
    assert!(
        [
            "GitHub rate limit reached: retry in 2 s",
            "GitHub rate limit reached: retry in 3 s"
        ]
        .contains(&message),
        "{result}"
    );

    // Two 502s, then an answer: retried inside the call, the test passes at once.
    fleet.fake.fail_next(FaultRule::server_error(
        FakeProvider::Github,
        "/user",
        502,
        2,
    ));
    let before = fleet.fake.requests("/github/api/user");
    let result = test_connector(&fleet, &github_id).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(fleet.fake.requests("/github/api/user") - before, 3);

    // Slower than the 1 s timeout, three times: named, and worth a retry by hand.
    fleet.fake.fail_next(FaultRule::slow(
        "/github/api/user",
        Duration::from_secs(3),
        3,
    ));
    let result = test_connector(&fleet, &github_id).await;
    assert_eq!(
        result["message"], "GitHub did not answer in 1 s: press to retry",
        "{result}"
    );
    fleet.finish().await;
}

#[tokio::test]
async fn the_breaker_opens_after_failures_in_a_row_and_closes_after_a_probe() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let fleet = ConnectorFleet::start(
        &["--metrics-addr", &metrics],
        &[
            ("TASKFLEET_BREAKER_FAILURES", "2"),
            ("TASKFLEET_BREAKER_COOLDOWN_SECS", "3"),
        ],
    )
    .await;
    let circuit = || async {
        let text = prometheus::scrape(&format!("http://{metrics}")).await;
        prometheus::sample(
            &text,
            "taskfleet_provider_circuit_state",
            &[("provider", "github")],
        )
    };
    fleet.fake.add_github_pat("ghp_good");
    let github = fleet
        .connect_token(json!({"provider": "github", "token": "ghp_good"}))
        .await;
    let id = github["id"].as_str().unwrap().to_owned();
    fleet.wait_ingest(&id, WITHIN).await;
    assert_eq!(circuit().await, 0.0);

    // GitHub fails six requests: two calls of three tries each, which open the circuit.
    fleet.fake.fail_next(FaultRule::server_error(
        FakeProvider::Github,
        "/user",
        500,
        6,
    ));
    for _ in 0..2 {
        let result = test_connector(&fleet, &id).await;
        assert_eq!(
            result["message"], "GitHub answered 500: press to retry",
            "{result}"
        );
    }
    assert_eq!(circuit().await, 2.0);
    // Open: the next call fails at once and GitHub sees nothing.
    let before = fleet.fake.requests("/github/api/user");
    let result = test_connector(&fleet, &id).await;
    let message = result["message"].as_str().unwrap();
    assert!(
        message.starts_with("GitHub is failing; calls to it are paused: retry in"),
        "{message}"
    );
    assert_eq!(fleet.fake.requests("/github/api/user"), before);

    // GitHub has recovered meanwhile; after the cooldown one probe goes through and closes
    // the circuit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let result = test_connector(&fleet, &id).await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        fleet.fake.requests("/github/api/user"),
        before + 1,
        "one probe"
    );
    wait_until(WITHIN, "the circuit closes", || async {
        circuit().await == 0.0
    })
    .await;
    fleet.finish().await;
}
