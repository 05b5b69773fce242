//! Connecting accounts through OAuth, as a person would: the consent page (the fakes approve
//! at once and redirect), the API's callback, the first ingest; a callback that cannot be
//! trusted changes nothing; access is refreshed once after a 401, with Atlassian's rotating
//! refresh tokens kept, and a refused refresh asks the person to reconnect.

use std::{collections::HashSet, time::Duration};

use taskfleet_tests::{
    connector_fleet::{ConnectorFleet, source_kind},
    fake_providers::FakeProvider,
    json,
};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn every_provider_connects_through_oauth_and_its_first_ingest_brings_its_items() {
    let fleet = ConnectorFleet::start(&[], &[]).await;
    let seeded = [
        (FakeProvider::Github, 7),
        (FakeProvider::Jira, 6),
        (FakeProvider::Confluence, 4),
        (FakeProvider::Gmail, 5),
        (FakeProvider::Gdrive, 3),
    ];
    for (provider, n) in seeded {
        fleet.fake.seed(provider, n);
    }
    fleet.fake.seed_github_review_requests(2);

    let mut all_tasks = HashSet::new();
    for (provider, n) in seeded {
        let kind = source_kind(provider);
        let connector = fleet.connect_oauth(kind).await;
        assert_eq!(connector["status"], "connected", "{connector}");
        assert_eq!(connector["auth"], "oauth");
        let id = connector["id"].as_str().unwrap();
        // The first ingest was enqueued with the connection, in the same transaction.
        let jobs = fleet.ingest_jobs(id).await;
        assert_eq!(jobs.len(), 1, "{kind}: exactly one ingest");
        let job = fleet.wait_ingest(id, WITHIN).await;
        assert_eq!(job["state"], "succeeded", "{kind}: {job}");
        let expected = if provider == FakeProvider::Github {
            n + 2
        } else {
            n
        };
        let tasks = fleet.tasks(kind).await;
        assert_eq!(tasks.len(), expected, "{kind}: {tasks:?}");
        for task in &tasks {
            assert_eq!(task["connector_id"], connector["id"], "{task}");
            assert!(!task["title"].as_str().unwrap().is_empty(), "{task}");
            assert!(task["url"].is_string(), "{task}");
            assert!(task["snippet"].as_str().unwrap().chars().count() <= 500);
            all_tasks.insert(task["id"].as_str().unwrap().parse::<Uuid>().unwrap());
        }
        let (_, after) = fleet
            .api
            .get(&fleet.key, &format!("/v1/connectors/{id}"))
            .await;
        assert_eq!(after["item_count"], expected as i64, "{after}");
        assert!(after["last_sync_at"].is_string(), "{after}");
    }
    // Atlassian's grant reached the one cloud site: its id and URL were kept.
    let (_, list) = fleet.api.get(&fleet.key, "/v1/connectors").await;
    let jira = list["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["provider"] == "jira")
        .unwrap();
    assert_eq!(jira["config"]["cloud_id"], fleet.fake.cloud_id());
    assert_eq!(jira["config"]["site_url"], fleet.fake.site_url());

    // Every task waits to be embedded exactly once.
    let embedded: Vec<Uuid> = fleet.embedded().await.into_iter().flatten().collect();
    assert_eq!(embedded.len(), all_tasks.len(), "no task embedded twice");
    assert_eq!(embedded.into_iter().collect::<HashSet<_>>(), all_tasks);
    fleet.finish().await;
}

#[tokio::test]
async fn a_replayed_foreign_or_refused_callback_changes_nothing() {
    let fleet = ConnectorFleet::start(&[], &[]).await;
    fleet.fake.seed(FakeProvider::Github, 2);

    let (_, created) = fleet
        .api
        .post(&fleet.key, "/v1/connectors", &json!({"provider": "github"}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let authorize = created["authorize_url"].as_str().unwrap();
    let query: std::collections::HashMap<String, String> = url_query(authorize);
    assert_eq!(query["code_challenge_method"], "S256", "{authorize}");
    assert_eq!(query["scope"], "read:user read:org");
    let callback = fleet.consent(authorize).await;

    // The state names a GitHub connector: Jira's callback does not know it.
    let foreign = callback.replace("/callback/github", "/callback/jira");
    let (status, page) = fleet.callback(&foreign).await;
    assert_eq!(status, 400, "{page}");
    let (status, _) = fleet.callback(&callback).await;
    assert_eq!(status, 200);
    // Used once: a replay is refused and the connector keeps its one ingest.
    let (status, page) = fleet.callback(&callback).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("does not work"), "{page}");
    let (status, page) = fleet
        .callback(&format!(
            "{}/v1/oauth/callback/github?code=x&state=made-up",
            fleet.api.base
        ))
        .await;
    assert_eq!(status, 400, "{page}");
    fleet.wait_ingest(&id, WITHIN).await;
    assert_eq!(fleet.ingest_jobs(&id).await.len(), 1);

    // A code the provider refuses: GitHub says so with a 200 and an `error` field.
    let (_, second) = fleet
        .api
        .post(
            &fleet.key,
            "/v1/connectors",
            &json!({"provider": "github", "name": "second"}),
        )
        .await;
    let second_id = second["id"].as_str().unwrap();
    let callback = fleet
        .consent(second["authorize_url"].as_str().unwrap())
        .await;
    let tampered = replace_param(&callback, "code", "not-the-code");
    let (status, page) = fleet.callback(&tampered).await;
    assert_eq!(status, 502, "{page}");
    assert!(page.contains("bad_verification_code"), "{page}");
    let (_, after) = fleet
        .api
        .get(&fleet.key, &format!("/v1/connectors/{second_id}"))
        .await;
    // Still waiting to be connected, with the reason it was not.
    assert_eq!(after["status"], "pending_auth", "{after}");
    let reason = after["status_message"].as_str().unwrap();
    assert!(reason.contains("bad_verification_code"), "{reason}");
    assert!(fleet.ingest_jobs(second_id).await.is_empty());

    // The person declined: the provider comes back with `error=access_denied`.
    let (_, third) = fleet
        .api
        .post(
            &fleet.key,
            "/v1/connectors",
            &json!({"provider": "jira", "name": "third"}),
        )
        .await;
    let state = url_query(third["authorize_url"].as_str().unwrap())["state"].clone();
    let (status, page) = fleet
        .callback(&format!(
            "{}/v1/oauth/callback/jira?error=access_denied&error_description=User%20did%20not%20authorize&state={state}",
            fleet.api.base
        ))
        .await;
    assert_eq!(status, 400, "{page}");
    let (_, after) = fleet
        .api
        .get(
            &fleet.key,
            &format!("/v1/connectors/{}", third["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(after["status"], "pending_auth");
    assert!(
        after["status_message"]
            .as_str()
            .unwrap()
            .contains("did not grant access"),
        "{after}"
    );
    // A fresh consent page connects it after all.
    let (status, again) = fleet
        .api
        .post(
            &fleet.key,
            &format!("/v1/connectors/{}/authorize", third["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    let callback = fleet
        .consent(again["authorize_url"].as_str().unwrap())
        .await;
    assert_eq!(fleet.callback(&callback).await.0, 200);
    fleet.finish().await;
}

#[tokio::test]
async fn a_401_refreshes_once_and_a_refused_refresh_asks_to_reconnect() {
    let fleet = ConnectorFleet::start(&[], &[]).await;
    fleet.fake.seed(FakeProvider::Jira, 3);
    fleet.fake.seed(FakeProvider::Gmail, 2);
    let jira = fleet.connect_oauth("jira").await;
    let jira_id = jira["id"].as_str().unwrap().to_owned();
    fleet.wait_ingest(&jira_id, WITHIN).await;
    let before = fleet.credentials(&jira_id).await;
    assert!(before["refresh_token"].is_string(), "{before:?}");

    // Atlassian: the access token stops working; one refresh, whose new refresh token (the
    // old one now dead) is kept.
    fleet.fake.expire_access_tokens();
    let job = fleet.run(&format!("/v1/connectors/{jira_id}/sync")).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 1, "refreshed inside the attempt");
    assert_eq!(fleet.fake.refreshes(FakeProvider::Jira), 1);
    let after = fleet.credentials(&jira_id).await;
    assert_ne!(after["refresh_token"], before["refresh_token"], "rotated");
    assert_ne!(after["access_token"], before["access_token"]);

    // Google: the grant is revoked; the refresh answers invalid_grant; the job is dead at
    // once and the connector asks to be reconnected.
    let gmail = fleet.connect_oauth("gmail").await;
    let gmail_id = gmail["id"].as_str().unwrap().to_owned();
    fleet.wait_ingest(&gmail_id, WITHIN).await;
    fleet.fake.revoke_refresh_tokens();
    fleet.fake.expire_access_tokens();
    let job = fleet.run(&format!("/v1/connectors/{gmail_id}/sync")).await;
    assert_eq!(job["state"], "dead", "{job}");
    assert_eq!(job["attempt"], 1, "not retried: {job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains("invalid_grant") && error.contains("reconnect the account"),
        "{error}"
    );
    let (_, after) = fleet
        .api
        .get(&fleet.key, &format!("/v1/connectors/{gmail_id}"))
        .await;
    assert_eq!(after["status"], "reauth_required", "{after}");

    // Reconnecting through a fresh consent page mends it.
    let (_, again) = fleet
        .api
        .post(
            &fleet.key,
            &format!("/v1/connectors/{gmail_id}/authorize"),
            &json!({}),
        )
        .await;
    let callback = fleet
        .consent(again["authorize_url"].as_str().unwrap())
        .await;
    assert_eq!(fleet.callback(&callback).await.0, 200);
    let job = fleet.wait_ingest(&gmail_id, WITHIN).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, after) = fleet
        .api
        .get(&fleet.key, &format!("/v1/connectors/{gmail_id}"))
        .await;
    assert_eq!(after["status"], "connected");
    fleet.finish().await;
}

fn url_query(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn replace_param(url: &str, name: &str, value: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == name {
                (k, value.to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.into()
}
