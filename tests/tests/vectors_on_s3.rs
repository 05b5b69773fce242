//! The vector store on object storage (`TASKFLEET_VECTOR_URI=s3://…`), as workers on several
//! hosts keep it: against moto's S3 server, one worker embeds a task, another worker, with
//! nothing on its disk, finds its repeat a near-duplicate of it through the bucket; two
//! workers writing at once lose none of each other's vectors; and a worker whose store stops
//! answering is not ready and says why.

use std::time::Duration;

use taskfleet_tests::{
    TestEnv, assert_worker_not_ready, free_port, json, s3::S3Server, wait_until, wait_worker_ready,
};

const WITHIN: Duration = Duration::from_secs(120);
const TITLE: &str = "The export to S3 fails every night since Monday";
/// Where the workers keep their vectors: a path in the test's bucket.
const STORE: &str = "s3://vectors/fleet";

#[tokio::test]
async fn workers_on_two_hosts_share_one_vector_store_in_a_bucket() {
    let s3 = S3Server::start().await;
    s3.create_bucket("vectors").await;
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");

    // The first host embeds the original.
    let first = s3.start_worker(&mut env, &["--queues", "embed,agent"], STORE);
    let original = add_task(&api, &key, "the support inbox").await;
    embedded(&env, &original).await;
    env.terminate(first);

    // The second host, a process with no store of its own on disk, embeds the repeat.
    s3.start_worker(&mut env, &["--queues", "embed,agent"], STORE);
    let repeat = add_task(&api, &key, "the status page").await;
    embedded(&env, &repeat).await;
    let (_, task) = api.get(&key, &format!("/v1/tasks/{repeat}")).await;
    assert_eq!(task["duplicate_of"], original.as_str(), "{task}");
    assert!(
        !env.vector_dir.exists(),
        "no worker wrote vectors to its own disk"
    );
    env.finish().await;
}

/// Reports of different failures, each different enough from the others to be no
/// near-duplicate of them.
const REPORTS: [&str; 8] = [
    "The export to S3 fails every night since Monday",
    "Customers in Brazil cannot pay with Pix at checkout",
    "The Android app crashes when the camera permission is denied",
    "Invoices are emailed twice to customers on annual plans",
    "Search results ignore the language filter on the help center",
    "The on-call rotation skips engineers in the Tokyo office",
    "Password reset links expire before the email arrives",
    "The warehouse scanner rejects barcodes printed in landscape",
];

#[tokio::test]
async fn two_workers_writing_one_bucket_at_once_lose_no_vector() {
    let s3 = S3Server::start().await;
    s3.create_bucket("vectors").await;
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");

    // Two hosts embed at once: each commit may race the other's for the same version. One
    // embed job at a time each, so that neither can take all eight.
    let one_at_a_time = ["--queues", "embed,agent", "--concurrency", "64,embed=1"];
    let writers = [
        s3.start_worker(&mut env, &one_at_a_time, STORE),
        s3.start_worker(&mut env, &one_at_a_time, STORE),
    ];
    // Added at once, so that both workers' executors take some.
    let originals = futures::future::join_all(
        REPORTS.map(|report| add_report(&api, &key, report, "the support inbox")),
    )
    .await;
    for original in &originals {
        embedded(&env, original).await;
    }
    let embedders: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT worker) FROM jobs WHERE kind = 'embed.items' AND state = 'succeeded'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(embedders, 2, "both workers wrote to the bucket");
    for writer in writers {
        env.terminate(writer);
    }

    // A third host finds every original through the bucket: none was overwritten.
    s3.start_worker(&mut env, &["--queues", "embed,agent"], STORE);
    for (report, original) in REPORTS.iter().zip(&originals) {
        let repeat = add_report(&api, &key, report, "the status page").await;
        embedded(&env, &repeat).await;
        let (_, task) = api.get(&key, &format!("/v1/tasks/{repeat}")).await;
        assert_eq!(task["duplicate_of"], original.as_str(), "{report}: {task}");
    }
    env.finish().await;
}

#[tokio::test]
async fn a_worker_whose_bucket_stops_answering_is_not_ready_and_says_why() {
    let mut s3 = S3Server::start().await;
    s3.create_bucket("vectors").await;
    let mut env = TestEnv::new().await;
    let addr = format!("127.0.0.1:{}", free_port());
    s3.start_worker(
        &mut env,
        &["--queues", "embed,agent", "--metrics-addr", &addr],
        STORE,
    );
    wait_worker_ready(&addr, WITHIN).await;

    s3.stop();
    assert_worker_not_ready(&addr, "vector store").await;
    env.finish().await;
}

/// Adds a task by hand, one of two reports of the same failure; returns its id.
async fn add_task(api: &taskfleet_tests::Api, key: &str, source: &str) -> String {
    add_report(api, key, TITLE, source).await
}

/// Adds a task by hand: `title` as reported from `source`; returns its id.
async fn add_report(api: &taskfleet_tests::Api, key: &str, title: &str, source: &str) -> String {
    let body = json!({
        "title": title,
        "description": format!("Reported from {source}: {title}."),
    });
    let (status, task) = api.post(key, "/v1/tasks", &body).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().unwrap().to_owned()
}

/// Waits until the embed job of task `id` succeeded.
async fn embedded(env: &TestEnv, id: &str) {
    wait_until(WITHIN, "the task is embedded", || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'embed.items' AND state = 'succeeded'
             AND payload->'item_ids' ? $1",
        )
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        done > 0
    })
    .await;
}
