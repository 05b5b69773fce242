//! `ingest.connector` end to end: pages of items become tasks, a second ingest changes and
//! embeds only what changed, a worker killed mid-ingest loses and duplicates nothing, and each
//! provider's incremental sweep (GitHub `since`, Jira `updated`, Confluence completions,
//! Gmail history and its expiry, Drive changes) closes what closed at the source.

use std::{collections::HashSet, time::Duration};

use taskfleet_tests::{
    FAST_FAILOVER,
    connector_fleet::{ConnectorFleet, source_kind},
    fake_providers::FakeProvider,
    json, wait_until,
};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(60);

fn ids(tasks: &[serde_json::Value]) -> HashSet<Uuid> {
    tasks
        .iter()
        .map(|task| task["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn pages_become_tasks_and_a_second_ingest_embeds_only_what_changed() {
    let mut fleet = ConnectorFleet::start(&[], &[]).await;
    fleet.fake.seed(FakeProvider::Github, 250);
    fleet.fake.seed_github_review_requests(5);
    fleet.fake.add_github_pat("ghp_pat_for_tests");
    let connector = fleet
        .connect_token(json!({"provider": "github", "token": "ghp_pat_for_tests"}))
        .await;
    assert_eq!(connector["status"], "connected", "{connector}");
    assert_eq!(connector["auth"], "token");
    let id = connector["id"].as_str().unwrap().to_owned();
    let job = fleet.wait_ingest(&id, WITHIN).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    // 250 assigned issues on three pages of 100, then one page of review requests.
    assert_eq!(job["result"]["pages"], 4, "{job}");
    assert_eq!(job["result"]["fetched"], 255);
    let job_id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let progress = fleet.env.progress_messages(job_id).await;
    assert_eq!(
        progress,
        [
            "fetched 100 items (1 pages)",
            "fetched 200 items (2 pages)",
            "fetched 250 items (3 pages)",
            "fetched 255 items (4 pages)"
        ]
    );
    let tasks = fleet.tasks("github").await;
    assert_eq!(tasks.len(), 255);
    let first = ids(&tasks);
    let embedded: Vec<Uuid> = fleet.embedded().await.into_iter().flatten().collect();
    assert_eq!(embedded.len(), 255, "each task embedded once");
    assert_eq!(embedded.into_iter().collect::<HashSet<_>>(), first);

    // Three issues change, one closes, a pull request whose review was asked is merged; a
    // second ingest picks up just those.
    fleet.fake.touch(FakeProvider::Github, &[3, 140, 249]);
    fleet.fake.complete(FakeProvider::Github, 7);
    fleet.fake.complete(FakeProvider::Github, 252);
    let embed_jobs_before = fleet.embedded().await.len();
    let job = fleet.run(&format!("/v1/connectors/{id}/sync")).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let tasks = fleet.tasks("github").await;
    assert_eq!(ids(&tasks), first, "the same tasks, none duplicated");
    let new_embeds: Vec<Uuid> = fleet.embedded().await[embed_jobs_before..]
        .iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(
        new_embeds.len(),
        3,
        "only the changed text is embedded again"
    );
    let touched: HashSet<Uuid> = tasks
        .iter()
        .filter(|task| task["title"].as_str().unwrap().contains("(revised"))
        .map(|task| task["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(new_embeds.into_iter().collect::<HashSet<_>>(), touched);
    let done: Vec<_> = tasks
        .iter()
        .filter(|task| task["status"] == "done")
        .collect();
    assert_eq!(
        done.len(),
        2,
        "the closed issue and the merged pull request are done: {done:?}"
    );

    // Nothing changed: a third ingest writes no task and enqueues no embedding.
    let embed_jobs_before = fleet.embedded().await.len();
    let job = fleet.run(&format!("/v1/connectors/{id}/sync")).await;
    assert_eq!(job["result"]["changed"], 0, "{job}");
    assert_eq!(fleet.embedded().await.len(), embed_jobs_before);

    // Sync is idempotent while an ingest waits.
    fleet.env.signal(1, "STOP");
    let (first_status, waiting) = fleet
        .api
        .post(&fleet.key, &format!("/v1/connectors/{id}/sync"), &json!({}))
        .await;
    let (again_status, again) = fleet
        .api
        .post(&fleet.key, &format!("/v1/connectors/{id}/sync"), &json!({}))
        .await;
    assert_eq!((first_status, again_status), (201, 200));
    assert_eq!(waiting["id"], again["id"]);
    fleet.env.signal(1, "CONT");
    fleet.finish().await;
}

#[tokio::test]
async fn a_worker_killed_mid_ingest_loses_and_duplicates_nothing() {
    let mut fleet = ConnectorFleet::start(FAST_FAILOVER, &[]).await;
    fleet.fake.seed(FakeProvider::Jira, 640);
    fleet
        .fake
        .add_atlassian_api_token("ana@acme.test", "atl_token");
    // Each page takes a while, so the worker dies between pages.
    fleet.fake.set_latency(Duration::from_millis(400));
    let connector = fleet
        .connect_token(
            json!({"provider": "jira", "token": "atl_token", "email": "ana@acme.test",
                              "config": {"site_url": fleet.fake.site_url()}}),
        )
        .await;
    let id = connector["id"].as_str().unwrap().to_owned();
    wait_until(WITHIN, "two pages are stored", || async {
        fleet.tasks("jira").await.len() >= 200
    })
    .await;
    fleet.env.signal(1, "KILL");
    let stored_at_kill = fleet.tasks("jira").await.len();
    assert!(
        stored_at_kill < 640,
        "killed mid-ingest ({stored_at_kill} stored)"
    );
    fleet.fake.set_latency(Duration::ZERO);
    fleet.start_worker(FAST_FAILOVER, &[]);

    let job = fleet.wait_ingest(&id, WITHIN).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2, "reclaimed and run again: {job}");
    let job_id: Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let events: Vec<String> = fleet
        .env
        .job_events(job_id)
        .await
        .into_iter()
        .map(|(event, _)| event)
        .collect();
    assert!(events.contains(&"lease_reclaimed".to_owned()), "{events:?}");
    // The second attempt resumed from the last page stored: it fetched only the rest.
    let refetched = job["result"]["fetched"].as_u64().unwrap() as usize;
    assert!(
        refetched <= 640 - stored_at_kill + 100,
        "resumed from the stored cursor: fetched {refetched} after {stored_at_kill} were stored"
    );
    let tasks = fleet.tasks("jira").await;
    assert_eq!(tasks.len(), 640);
    let embedded: Vec<Uuid> = fleet.embedded().await.into_iter().flatten().collect();
    assert_eq!(embedded.len(), 640, "no task embedded twice");
    assert_eq!(
        embedded.into_iter().collect::<HashSet<_>>(),
        ids(&tasks),
        "none forgotten"
    );
    fleet.finish().await;
}

#[tokio::test]
async fn incremental_sweeps_follow_each_provider_and_close_what_closed() {
    let fleet = ConnectorFleet::start(&[], &[]).await;
    for provider in [
        FakeProvider::Jira,
        FakeProvider::Confluence,
        FakeProvider::Gmail,
        FakeProvider::Gdrive,
    ] {
        fleet.fake.seed(provider, 120);
    }
    let mut connectors = Vec::new();
    for provider in [
        FakeProvider::Jira,
        FakeProvider::Confluence,
        FakeProvider::Gmail,
        FakeProvider::Gdrive,
    ] {
        let connector = fleet.connect_oauth(source_kind(provider)).await;
        let id = connector["id"].as_str().unwrap().to_owned();
        let job = fleet.wait_ingest(&id, WITHIN).await;
        assert_eq!(job["state"], "succeeded", "{provider:?}: {job}");
        assert_eq!(
            fleet.tasks(source_kind(provider)).await.len(),
            120,
            "{provider:?}"
        );
        connectors.push((provider, id));
    }

    for (provider, _) in &connectors {
        fleet.fake.touch(*provider, &[0, 1]);
        fleet.fake.complete(*provider, 5);
    }
    // Gmail keeps a week of history: this mailbox's is gone, so the next sweep starts over.
    fleet.fake.expire_gmail_history();
    for (provider, id) in &connectors {
        let kind = source_kind(*provider);
        let before = fleet.embedded().await.len();
        let job = fleet.run(&format!("/v1/connectors/{id}/sync")).await;
        assert_eq!(job["state"], "succeeded", "{kind}: {job}");
        let tasks = fleet.tasks(kind).await;
        let changed: usize = fleet.embedded().await[before..].iter().map(Vec::len).sum();
        let done = tasks.iter().filter(|t| t["status"] == "done").count();
        match provider {
            // Messages do not change: two new ones arrived, found by the full sweep again.
            FakeProvider::Gmail => {
                assert_eq!(tasks.len(), 122, "{kind}: no duplicates after a resync");
                assert_eq!(changed, 2, "{kind}: only the new messages");
                assert_eq!(done, 0);
            }
            _ => {
                assert_eq!(tasks.len(), 120, "{kind}");
                assert_eq!(changed, 2, "{kind}: the two edited items");
                assert_eq!(done, 1, "{kind}: the completed item is done");
            }
        }
    }
    fleet.finish().await;
}

#[tokio::test]
async fn postgres_away_mid_ingest_loses_and_duplicates_nothing() {
    let mut fleet = ConnectorFleet::start(FAST_FAILOVER, &[]).await;
    // The worker reaches Postgres through a proxy the test can cut; the API does not.
    fleet.env.signal(1, "KILL");
    let postgres = fleet.env.proxy_postgres().await;
    fleet.start_worker(FAST_FAILOVER, &[]);
    fleet.fake.seed(FakeProvider::Jira, 500);
    fleet
        .fake
        .add_atlassian_api_token("ana@acme.test", "atl_token");
    fleet.fake.set_latency(Duration::from_millis(300));
    let connector = fleet
        .connect_token(
            json!({"provider": "jira", "token": "atl_token", "email": "ana@acme.test",
                              "config": {"site_url": fleet.fake.site_url()}}),
        )
        .await;
    let id = connector["id"].as_str().unwrap().to_owned();
    wait_until(WITHIN, "a page is stored", || async {
        !fleet.tasks("jira").await.is_empty()
    })
    .await;
    postgres.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.restore();
    fleet.fake.set_latency(Duration::ZERO);

    let job = fleet.wait_ingest(&id, WITHIN).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let tasks = fleet.tasks("jira").await;
    assert_eq!(tasks.len(), 500);
    let embedded: Vec<Uuid> = fleet.embedded().await.into_iter().flatten().collect();
    assert_eq!(embedded.len(), 500, "no task embedded twice");
    assert_eq!(embedded.into_iter().collect::<HashSet<_>>(), ids(&tasks));
    fleet.finish().await;
}
