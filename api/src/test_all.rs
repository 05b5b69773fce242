//! `POST /v1/connectors/test-all`: one test per connector with credentials, and, for a client
//! that accepts `text/event-stream`, their results as they land: `connecting` for each, then
//! `ok` or `error` per connector, then `done` with the counts. Results are read from the
//! ledger whenever one of the tests' jobs announces its end on the event hub (and once a
//! second besides, so a missed announcement costs a second, not a result).

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use poem::web::{Data, sse::Event};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::Header,
    payload::{EventStream, Json},
    types::ToJSON,
};
use taskfleet_connectors::Provider;
use taskfleet_jobs::{JobState, wire};
use taskfleet_storage::{JobRecord, Scope};
use tokio::{sync::mpsc, time::Instant};
use uuid::Uuid;

use crate::{
    auth::TenantKey,
    connectors::request_tests,
    error::ApiError,
    events::{SharedEvent, job_end_announced},
    observe::RequestId,
    state::AppState,
};

/// How long the stream waits for all results before reporting the missing ones as errors.
const RESULTS_WITHIN: Duration = Duration::from_secs(60);
/// How often pending results are read from the ledger without an announcement.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Object)]
pub struct TestJob {
    pub connector_id: Uuid,
    pub provider: Provider,
    /// The `test.connector` job; its result says `ok`, or the error and what to do.
    pub job_id: Uuid,
}

#[derive(Debug, Object)]
pub struct TestJobs {
    pub tests: Vec<TestJob>,
}

/// One message of the test-all stream.
#[derive(Debug, Clone, Object)]
pub struct TestProgress {
    /// `connecting`, `ok`, `error` or `done`; also the message's SSE `event`.
    pub event: String,
    #[oai(skip_serializing_if_is_none)]
    pub connector_id: Option<Uuid>,
    #[oai(skip_serializing_if_is_none)]
    pub provider: Option<Provider>,
    /// With `ok` and `error`: what the test found ("connected as …", or what failed and what
    /// to do).
    #[oai(skip_serializing_if_is_none)]
    pub message: Option<String>,
    /// With `done`: how many tests passed.
    #[oai(skip_serializing_if_is_none)]
    pub ok: Option<u32>,
    /// With `done`: how many failed.
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<u32>,
}

type ProgressStream = Pin<Box<dyn Stream<Item = TestProgress> + Send>>;

#[derive(ApiResponse)]
pub enum TestAllAnswer {
    /// `Accept: text/event-stream`: `connecting` for each connector, `ok` or `error` as each
    /// result lands, then `done` with the counts; each message sent as it happens, its `id`
    /// numbering the stream's messages from 1.
    #[oai(status = 200)]
    Stream(EventStream<ProgressStream>),
    /// Any other `Accept`: the tests were enqueued; here are their jobs.
    #[oai(status = 202)]
    Enqueued(Json<TestJobs>),
}

pub struct TestAllApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Connectors")]
impl TestAllApi {
    /// Test every connector
    ///
    /// Enqueues a `test.connector` job for each connector with credentials (or finds the one
    /// waiting). With `Accept: text/event-stream` the answer streams their results; a test
    /// with no result after 60 s is reported as an error (is a worker serving the `test`
    /// queue?).
    #[oai(
        path = "/connectors/test-all",
        method = "post",
        operation_id = "testAllConnectors"
    )]
    async fn test_all(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        accept: Header<Option<String>>,
    ) -> Result<TestAllAnswer, ApiError> {
        let streaming = accept
            .0
            .as_deref()
            .is_some_and(|accept| accept.contains("text/event-stream"));
        // Subscribed before the jobs exist, so no announcement of theirs is missed.
        let live = streaming.then(|| state.hub.subscribe());
        let tests: Vec<TestJob> = request_tests(&state, auth.0.id, &request_id)
            .await?
            .into_iter()
            .map(|(connector, job)| TestJob {
                connector_id: connector.id,
                provider: wire::parse(&connector.provider).unwrap_or(Provider::Github),
                job_id: job.id,
            })
            .collect();
        let Some(live) = live else {
            return Ok(TestAllAnswer::Enqueued(Json(TestJobs { tests })));
        };
        let (tx, mut rx) = mpsc::channel(tests.len() * 2 + 2);
        tokio::spawn(follow(
            state.clone(),
            Scope::Tenant(auth.0.id),
            tests,
            live,
            tx,
        ));
        let stream: ProgressStream = Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut numbered = 0u32;
        Ok(TestAllAnswer::Stream(
            EventStream::new(stream)
                .keep_alive(KEEP_ALIVE)
                .to_event(move |progress| {
                    numbered += 1;
                    Event::message(progress.to_json_string())
                        .id(numbered.to_string())
                        .event_type(progress.event)
                }),
        ))
    }
}

fn progress(event: &str, test: &TestJob, message: Option<String>) -> TestProgress {
    TestProgress {
        event: event.to_owned(),
        connector_id: Some(test.connector_id),
        provider: Some(test.provider),
        message,
        ok: None,
        error: None,
    }
}

/// Sends the stream's messages until every test has a result, or [`RESULTS_WITHIN`] passed.
async fn follow(
    state: AppState,
    scope: Scope,
    tests: Vec<TestJob>,
    mut live: tokio::sync::broadcast::Receiver<Arc<SharedEvent>>,
    tx: mpsc::Sender<TestProgress>,
) {
    for test in &tests {
        if tx.send(progress("connecting", test, None)).await.is_err() {
            return;
        }
    }
    let mut pending: HashMap<Uuid, TestJob> =
        tests.into_iter().map(|test| (test.job_id, test)).collect();
    let (mut passed, mut failed) = (0, 0);
    let deadline = Instant::now() + RESULTS_WITHIN;
    while !pending.is_empty() {
        let ids: Vec<Uuid> = pending.keys().copied().collect();
        for id in ids {
            let record = match state.ledger.get(scope, id).await {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(%err, "test-all could not read a test's job");
                    continue;
                }
            };
            let Some((ok, message)) = result(&record) else {
                continue;
            };
            let test = pending.remove(&id).expect("pending");
            if ok {
                passed += 1;
            } else {
                failed += 1;
            }
            let event = if ok { "ok" } else { "error" };
            if tx
                .send(progress(event, &test, Some(message)))
                .await
                .is_err()
            {
                return;
            }
        }
        if pending.is_empty() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                for test in pending.values() {
                    failed += 1;
                    let message = format!(
                        "no result within {} s: is a worker serving the `test` queue?",
                        RESULTS_WITHIN.as_secs()
                    );
                    if tx.send(progress("error", test, Some(message))).await.is_err() {
                        return;
                    }
                }
                break;
            }
            _ = job_end_announced(&mut live, |id| pending.contains_key(&id)) => {}
            _ = tokio::time::sleep(RECHECK_EVERY) => {}
            _ = tx.closed() => return,
        }
    }
    let done = TestProgress {
        event: "done".to_owned(),
        connector_id: None,
        provider: None,
        message: None,
        ok: Some(passed),
        error: Some(failed),
    };
    let _ = tx.send(done).await;
}

/// A finished test job's verdict: whether the credentials work, and in what words.
fn result(job: &JobRecord) -> Option<(bool, String)> {
    let state: JobState = job.state.parse().ok()?;
    match state {
        JobState::Succeeded => {
            let result = job.result.as_ref()?;
            let ok = result["ok"].as_bool() == Some(true);
            let message = result["message"].as_str().unwrap_or("").to_owned();
            Some((ok, message))
        }
        JobState::Dead => Some((
            false,
            job.error
                .clone()
                .unwrap_or_else(|| "the test failed".to_owned()),
        )),
        JobState::Cancelled => Some((false, "the test was cancelled".to_owned())),
        _ => None,
    }
}
