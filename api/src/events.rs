//! Live events over Server-Sent Events.
//!
//! One [`EventHub`] per process follows the Redis event stream, where the leader's sequencer
//! appends how far it has numbered events (their dense `seq`), and broadcasts the events up
//! to there, read from Postgres, to this process's SSE clients. Reading by `seq` from where
//! it stopped, the hub cannot skip one, and while the stream is quiet or unreadable it
//! checks Postgres, so a lost append or a Redis restart does not open a gap either. A client
//! resumes with `Last-Event-ID` (the last `seq` it saw): it is subscribed to the hub first,
//! then replayed from Postgres, then served live, skipping anything it already got, so the
//! union has no gap and no duplicate.

use std::{
    borrow::Cow,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use poem::{Body, IntoResponse, Response, web::Data};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Header, Path, Query},
    payload::EventStream,
    registry::{MetaResponses, MetaSchemaRef, Registry},
    types::{ToJSON, Type},
};
use serde_json::Value;
use taskfleet_jobs::EventName;
use taskfleet_storage::{
    EventFilter, EventLog, EventRecord, Scope, Tenant, redis as tf_redis, redis::Keys,
};
use taskfleet_telemetry::metrics;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::{auth::TenantKey, error::ApiError, state::AppState};

/// Events a slow client may fall behind the hub before it is dropped (it can resume).
const HUB_BUFFER: usize = 16_384;
/// Events queued for one client's connection.
const CLIENT_BUFFER: usize = 1_024;
/// Events read from Postgres per replay query.
const REPLAY_PAGE: i64 = 1_000;
/// Comment lines sent on idle streams so proxies keep them open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Bytes of events one write to a client gathers at most (events already waiting for it).
const WRITE_BYTES: usize = 64 * 1024;
/// How long one `XREAD` blocks; between reads the hub also checks Postgres for missed events.
const READ_BLOCK: Duration = Duration::from_millis(1_000);

/// The SSE streams open in this API process, counted per API key, and how long a replay may
/// be: a client that opens streams in a loop, or resumes from the beginning of time, costs a
/// bounded share of the process and of Postgres.
pub struct OpenStreams {
    per_key: usize,
    replay_max: i64,
    open: std::sync::Mutex<std::collections::HashMap<Uuid, usize>>,
}

/// One open stream, counted until it is dropped (the client went away or the stream ended).
pub struct StreamSlot {
    streams: Arc<OpenStreams>,
    key: Uuid,
}

impl OpenStreams {
    pub fn new(per_key: usize, replay_max: i64) -> Arc<OpenStreams> {
        Arc::new(OpenStreams {
            per_key,
            replay_max,
            open: Default::default(),
        })
    }

    /// A slot for one more stream of the API key `key`, or a 429 when it has its limit open.
    fn open(self: &Arc<Self>, key: Uuid) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().expect("open streams lock");
        let count = open.entry(key).or_default();
        if *count >= self.per_key {
            return Err(ApiError::too_many_requests(
                "too_many_streams",
                format!(
                    "this API key has {} event streams open, the most one API process serves \
                     it (TASKFLEET_SSE_STREAMS_PER_KEY); close one first",
                    self.per_key
                ),
                5,
            ));
        }
        *count += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            key,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().expect("open streams lock");
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// An event as streams deliver it.
#[derive(Debug, Clone, Object)]
pub struct JobEvent {
    /// Position in the event stream; the SSE `id`, and what `Last-Event-ID` takes.
    pub seq: i64,
    pub ts: DateTime<Utc>,
    #[oai(nullable)]
    pub job_id: Option<Uuid>,
    #[oai(nullable)]
    pub queue: Option<String>,
    #[oai(nullable)]
    pub kind: Option<String>,
    /// `job_enqueued`, `job_started`, `job_progress`, `job_succeeded`, … (also the SSE `event`).
    pub event: String,
    /// Who caused it: `api`, or the worker process's name.
    pub actor: String,
    pub details: Value,
}

/// One event with its SSE message rendered once, however many clients receive it.
#[derive(Debug)]
pub struct SharedEvent {
    pub record: EventRecord,
    /// `id: <seq>`, `event: <name>` and `data: <json>` lines, as poem's SSE writer wrote them
    /// (the JSON is compact, so one `data` line).
    message: Bytes,
}

impl SharedEvent {
    fn new(record: EventRecord) -> SharedEvent {
        let json = serde_json::to_string(&record).expect("events serialise");
        let head = format!("id: {}\nevent: {}\ndata: ", record.seq, record.event);
        // Exactly as long as it must be: `Bytes` keeps whatever capacity the string had.
        let mut message = String::with_capacity(head.len() + json.len() + 2);
        message.push_str(&head);
        message.push_str(&json);
        message.push_str("\n\n");
        SharedEvent {
            record,
            message: Bytes::from(message),
        }
    }
}

/// The stream item of the SSE endpoints; documented as [`JobEvent`].
#[derive(Debug, Clone)]
pub struct StreamItem(pub Arc<SharedEvent>);

impl Type for StreamItem {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        JobEvent::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        JobEvent::schema_ref()
    }

    fn register(registry: &mut Registry) {
        JobEvent::register(registry)
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ToJSON for StreamItem {
    fn to_json(&self) -> Option<Value> {
        serde_json::to_value(&self.0.record).ok()
    }
}

pub type EventStreamBody = Pin<Box<dyn Stream<Item = StreamItem> + Send>>;

/// Fans the events the Redis stream announces out to this process's SSE clients.
pub struct EventHub {
    sender: broadcast::Sender<Arc<SharedEvent>>,
    /// The `seq` of the newest event the hub is past (broadcast, or numbered while nobody
    /// listened); -1 until its reader has read where numbering stands.
    head: Arc<AtomicI64>,
}

impl EventHub {
    /// Starts the hub's reader; it follows events from the newest one numbered when it starts.
    pub fn start(redis: tf_redis::RedisConfig, keys: Keys, events: EventLog) -> Arc<EventHub> {
        let (sender, _) = broadcast::channel(HUB_BUFFER);
        let head = Arc::new(AtomicI64::new(-1));
        let hub = Arc::new(EventHub {
            sender,
            head: head.clone(),
        });
        tokio::spawn(read_forever(redis, keys, events, hub.sender.clone(), head));
        hub
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SharedEvent>> {
        self.sender.subscribe()
    }

    /// Where a stream opened now begins: every event the hub broadcasts from here on comes
    /// after it. `None` until the hub knows.
    pub fn head(&self) -> Option<i64> {
        Some(self.head.load(Ordering::Acquire)).filter(|&seq| seq >= 0)
    }
}

/// Resolves when the hub announces the end (success, death, cancellation) of a job that
/// `watched` picks, or when `live` fell behind: either way the caller's next read of the
/// ledger settles it.
pub async fn job_end_announced(
    live: &mut broadcast::Receiver<Arc<SharedEvent>>,
    watched: impl Fn(Uuid) -> bool,
) {
    loop {
        match live.recv().await {
            Ok(shared) => {
                let record = &shared.record;
                let ended = EventName::TERMINAL
                    .iter()
                    .any(|name| name.as_str() == record.event);
                if ended && record.job_id.is_some_and(&watched) {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// Follows the Redis stream's notices of how far events are numbered; see [`HubReader`].
async fn read_forever(
    redis: tf_redis::RedisConfig,
    keys: Keys,
    events: EventLog,
    sender: broadcast::Sender<Arc<SharedEvent>>,
    head: Arc<AtomicI64>,
) {
    let last_seq =
        taskfleet_storage::wait_for("Postgres (event log)", || events.latest_seq()).await;
    head.store(last_seq, Ordering::Release);
    let mut reader = HubReader {
        events,
        sender,
        last_seq,
        head,
    };
    loop {
        // A connection of its own: a blocking XREAD would hold up a shared one.
        let mut conn = match tf_redis::connect(&redis).await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(%err, "event hub cannot reach Redis; reading Postgres meanwhile");
                reader.catch_up().await;
                tokio::time::sleep(READ_BLOCK).await;
                continue;
            }
        };
        // Start from the newest entry: anything older comes from Postgres.
        let mut last_id = "$".to_owned();
        loop {
            let read = tf_redis::read_numbered(&mut conn, &keys, &last_id, READ_BLOCK, 1_000).await;
            let numbered = match read {
                Ok(numbered) => numbered,
                Err(err) => {
                    tracing::warn!(%err, "event stream read failed; reconnecting");
                    // Redis may answer yet refuse the stream: clients still get their events.
                    reader.catch_up().await;
                    break;
                }
            };
            last_id = numbered.last_id;
            match numbered.up_to {
                Some(seq) => reader.numbered_up_to(seq).await,
                // Quiet stream: make sure nothing was sequenced without reaching Redis.
                None => reader.catch_up().await,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct HubReader {
    events: EventLog,
    sender: broadcast::Sender<Arc<SharedEvent>>,
    last_seq: i64,
    /// `last_seq`, for [`EventHub::head`].
    head: Arc<AtomicI64>,
}

impl HubReader {
    /// Numbering has reached `seq`: reads the events up to it from Postgres and broadcasts
    /// them. While this process has no SSE client it only notes how far numbering got:
    /// reading every event of a busy fleet for nobody would waste Postgres's time and ours.
    /// A client that connects later replays anything older from Postgres itself.
    async fn numbered_up_to(&mut self, seq: i64) {
        if seq <= self.last_seq {
            return;
        }
        if self.sender.receiver_count() == 0 {
            self.passed(seq);
            return;
        }
        self.catch_up_to(seq).await;
    }

    /// Reads and broadcasts whatever was numbered since the last event; without SSE clients
    /// it only notes how far numbering got, as [`HubReader::numbered_up_to`] does.
    async fn catch_up(&mut self) {
        if self.sender.receiver_count() == 0 {
            // The number is read before looking again: a client that subscribed meanwhile
            // is served by the full read below.
            match self.events.latest_seq().await {
                Ok(latest) if self.sender.receiver_count() == 0 => {
                    self.passed(self.last_seq.max(latest));
                    return;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, "event hub could not read how far events are numbered");
                    return;
                }
            }
        }
        self.catch_up_to(i64::MAX).await
    }

    /// Reads events after `last_seq` up to `until` from Postgres and broadcasts them.
    async fn catch_up_to(&mut self, until: i64) {
        while self.last_seq < until {
            match self.events.all_after(self.last_seq, REPLAY_PAGE).await {
                Ok(page) => {
                    let before = self.last_seq;
                    for record in page.into_iter().take_while(|r| r.seq <= until) {
                        self.broadcast(SharedEvent::new(record));
                    }
                    if self.last_seq == before {
                        return; // nothing more is numbered yet
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "event hub could not read missed events");
                    return;
                }
            }
        }
    }

    fn broadcast(&mut self, event: SharedEvent) {
        // No receivers is fine: nobody is listening.
        let seq = event.record.seq;
        let _ = self.sender.send(Arc::new(event));
        self.passed(seq);
    }

    /// The hub is past `seq`: a stream opened from now on begins after it.
    fn passed(&mut self, seq: i64) {
        self.last_seq = seq;
        self.head.store(seq, Ordering::Release);
    }
}

/// What one SSE client asked for.
pub struct Subscription {
    /// Whose events the client may see.
    pub scope: Scope,
    pub filter: EventFilter,
    /// Replay events after this `seq` first (`Last-Event-ID`).
    pub after: Option<i64>,
    /// A job's stream ends after the job's terminal event.
    pub end_on_terminal: bool,
}

/// Serves one client: replay, then live, through a bounded queue. The client is dropped when
/// it falls more than the hub's buffer behind; it resumes with `Last-Event-ID`. A replay
/// sends at most the limit of `slot`'s streams, then ends the stream: the client resumes
/// from the last event it got, so a long replay costs one bounded read per request.
pub fn serve(
    hub: &EventHub,
    events: EventLog,
    sub: Subscription,
    slot: StreamSlot,
) -> EventStreamBody {
    let mut live = hub.subscribe();
    let (tx, mut rx) = mpsc::channel::<StreamItem>(CLIENT_BUFFER);
    let replay_max = slot.streams.replay_max;
    tokio::spawn(async move {
        let _client = SseClient::count();
        let _slot = slot;
        // A job that has already ended: replay its events (all numbered by now) and stop.
        let ended = match (sub.end_on_terminal, sub.filter.job_id) {
            (true, Some(job_id)) => match events.latest_of_job(sub.scope, job_id).await {
                Ok(latest) => latest.is_some_and(|latest| is_terminal(&latest)),
                Err(err) => {
                    tracing::warn!(%err, "could not read the job's latest event; closing the stream");
                    return;
                }
            },
            _ => false,
        };
        let mut sent = sub.after.unwrap_or(0);
        if let Some(after) = sub.after {
            let mut replayed = 0;
            loop {
                if replayed >= replay_max {
                    tracing::debug!(
                        replayed,
                        "replay limit reached; the client resumes from here"
                    );
                    return;
                }
                let page_size = REPLAY_PAGE.min(replay_max - replayed);
                let page = match events.after(sub.scope, sent, &sub.filter, page_size).await {
                    Ok(page) => page,
                    Err(err) => {
                        tracing::warn!(%err, after, "event replay failed; closing the stream");
                        return;
                    }
                };
                let last_page = (page.len() as i64) < page_size;
                replayed += page.len() as i64;
                for record in page {
                    sent = record.seq;
                    if tx
                        .send(StreamItem(Arc::new(SharedEvent::new(record))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if last_page {
                    break;
                }
            }
        }
        if ended {
            return;
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                // The client went away while nothing arrived for it.
                _ = tx.closed() => return,
            };
            let shared = match received {
                Ok(shared) => shared,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(
                        missed,
                        "SSE client fell behind; dropping it (it can resume)"
                    );
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let record = &shared.record;
            // The job's terminal event ends its stream, even when the filter hides it, and
            // even when the replay already sent it (the job ended between the check above
            // and the replay's read).
            let ends_stream = sub.end_on_terminal
                && record.job_id.is_some()
                && record.job_id == sub.filter.job_id
                && is_terminal(record);
            if record.seq <= sent || !sub.scope.covers(record.tenant_id) {
                if ends_stream && record.seq <= sent {
                    return;
                }
                continue;
            }
            if sub.filter.matches(sub.scope, record) {
                sent = record.seq;
                if tx.send(StreamItem(shared.clone())).await.is_err() {
                    return; // the client went away
                }
            }
            if ends_stream {
                return;
            }
        }
    });
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Counts a connected client in `taskfleet_sse_clients` for as long as it lives.
struct SseClient;

impl SseClient {
    fn count() -> SseClient {
        metrics::SSE_CLIENTS.inc();
        SseClient
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        metrics::SSE_CLIENTS.dec();
    }
}

fn is_terminal(record: &EventRecord) -> bool {
    EventName::TERMINAL
        .iter()
        .any(|name| name.as_str() == record.event)
}

/// Parses `Last-Event-ID` from the header or, for clients that cannot set headers, the
/// `last_event_id` query parameter.
pub fn last_event_id(
    header: Option<String>,
    query: Option<String>,
) -> Result<Option<i64>, ApiError> {
    match header.or(query) {
        None => Ok(None),
        Some(raw) => match raw.trim().parse::<i64>() {
            Ok(seq) if seq >= 0 => Ok(Some(seq)),
            _ => Err(ApiError::bad_request(format!(
                "Last-Event-ID `{raw}` is not an event id this API sent"
            ))),
        },
    }
}

fn list(raw: Option<String>) -> Vec<String> {
    raw.map(|raw| {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

pub struct EventsApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Events")]
impl EventsApi {
    /// Stream events (SSE)
    ///
    /// A tenant key sees its own jobs' events; an operator key sees every tenant's and the
    /// fleet's own (`worker_online`, `queue_paused`, …).
    ///
    /// `text/event-stream`: each message's `id` is the event's `seq` and its `event` the event
    /// name; `Last-Event-ID` (header, or the `last_event_id` query parameter) replays what was
    /// missed, then the stream goes on live. A replay longer than
    /// `TASKFLEET_SSE_REPLAY_MAX` events (10,000) ends the stream after that many: resume
    /// from the last `id`. 429 `too_many_streams` when the API key has
    /// `TASKFLEET_SSE_STREAMS_PER_KEY` (1,000) streams open on this API process. Keep-alive
    /// comments every 15 s. The `X-Events-After` header names the event the stream begins
    /// after: a client whose stream breaks before its first event resumes with it as
    /// `Last-Event-ID`, and misses nothing.
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/events", method = "get", operation_id = "streamEvents")]
    async fn events(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// Only these queues (comma separated).
        queue: Query<Option<String>>,
        /// Only these kinds (comma separated).
        kind: Query<Option<String>>,
        /// Only these event names (comma separated).
        event: Query<Option<String>>,
        /// The `id` of the last event received: the stream resumes after it.
        #[oai(name = "Last-Event-ID", validator(pattern = "^[0-9]+$"))]
        last_event_id_header: Header<Option<String>>,
        /// `Last-Event-ID` as a query parameter, for clients that cannot set headers.
        #[oai(validator(pattern = "^[0-9]+$"))]
        last_event_id: Query<Option<String>>,
    ) -> Result<SseResponse, ApiError> {
        let after = crate::events::last_event_id(last_event_id_header.0, last_event_id.0)?;
        let filter = EventFilter {
            job_id: None,
            queues: list(queue.0),
            kinds: list(kind.0),
            events: list(event.0),
        };
        sse(
            &state,
            &auth.0,
            Subscription {
                scope: auth.0.scope(),
                filter,
                after,
                end_on_terminal: false,
            },
        )
    }

    /// Stream one job's events (SSE)
    ///
    /// The job's whole history (or what follows `Last-Event-ID`), then live events; the stream
    /// ends after the job succeeds, dies or is cancelled (or after a replay of
    /// `TASKFLEET_SSE_REPLAY_MAX` events: resume from the last `id`). 429 as for `/v1/events`.
    #[oai(
        path = "/jobs/:id/events",
        method = "get",
        operation_id = "streamJobEvents"
    )]
    async fn job_events(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
        /// Only these event names (comma separated).
        event: Query<Option<String>>,
        /// The `id` of the last event received: the stream resumes after it.
        #[oai(name = "Last-Event-ID", validator(pattern = "^[0-9]+$"))]
        last_event_id_header: Header<Option<String>>,
        /// `Last-Event-ID` as a query parameter, for clients that cannot set headers.
        #[oai(validator(pattern = "^[0-9]+$"))]
        last_event_id: Query<Option<String>>,
    ) -> Result<SseResponse, ApiError> {
        let after = crate::events::last_event_id(last_event_id_header.0, last_event_id.0)?;
        if state.ledger.get(auth.0.scope(), id.0).await?.is_none() {
            return Err(ApiError::not_found(format!("no job {}", id.0)));
        }
        let filter = EventFilter {
            job_id: Some(id.0),
            events: list(event.0),
            ..EventFilter::default()
        };
        let after = Some(after.unwrap_or(0));
        sse(
            &state,
            &auth.0,
            Subscription {
                scope: auth.0.scope(),
                filter,
                after,
                end_on_terminal: true,
            },
        )
    }
}

/// Serves `sub` to the caller authenticated as `tenant`, in a stream slot of its key. A
/// stream asked for without `Last-Event-ID` begins after the hub's head, read before the
/// stream subscribes (anything the hub passes in between is replayed), and says so in
/// [`EVENTS_AFTER`]: a client that breaks before its first event resumes from there.
fn sse(state: &AppState, tenant: &Tenant, mut sub: Subscription) -> Result<SseResponse, ApiError> {
    let slot = state.streams.open(tenant.key_id.unwrap_or(tenant.id))?;
    sub.after = sub.after.or_else(|| state.hub.head());
    Ok(SseResponse {
        after: sub.after,
        events: serve(&state.hub, state.events.clone(), sub, slot),
        keep_alive: KEEP_ALIVE,
    })
}

/// The response header naming the event a stream begins after.
pub const EVENTS_AFTER: &str = "X-Events-After";

/// The SSE endpoints' answer: documented as poem-openapi's [`EventStream`] of [`JobEvent`]s,
/// written by us. poem's writer formats every event again for every client and hands each
/// to the connection as a write of its own, which dominates the fan-out once many clients
/// subscribe (ADR 0007). Here every client writes the message rendered once per event, and
/// as many of its waiting events as fit [`WRITE_BYTES`] in one write.
pub struct SseResponse {
    /// The `seq` the stream begins after, for [`EVENTS_AFTER`].
    after: Option<i64>,
    events: EventStreamBody,
    /// How often a comment line goes out, whatever else does.
    keep_alive: Duration,
}

impl ApiResponse for SseResponse {
    fn meta() -> MetaResponses {
        EventStream::<EventStreamBody>::meta()
    }

    fn register(registry: &mut Registry) {
        EventStream::<EventStreamBody>::register(registry)
    }
}

impl IntoResponse for SseResponse {
    fn into_response(self) -> Response {
        let SseResponse {
            after,
            events,
            keep_alive,
        } = self;
        // Fused: a write may gather up to the end of the events, and the next poll then
        // asks again.
        let mut events = events.fuse();
        let mut keep_alive =
            tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
        let writes = futures::stream::poll_fn(move |cx| {
            let first = match events.poll_next_unpin(cx) {
                Poll::Ready(Some(StreamItem(first))) => first,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    return keep_alive
                        .poll_tick(cx)
                        .map(|_| Some(Ok::<_, std::io::Error>(Bytes::from_static(b":\n\n"))));
                }
            };
            let mut gathered: Option<BytesMut> = None;
            while gathered.as_ref().map_or(first.message.len(), BytesMut::len) < WRITE_BYTES {
                let Poll::Ready(Some(StreamItem(next))) = events.poll_next_unpin(cx) else {
                    break;
                };
                gathered
                    .get_or_insert_with(|| BytesMut::from(&first.message[..]))
                    .extend_from_slice(&next.message);
            }
            Poll::Ready(Some(Ok(
                gathered.map_or_else(|| first.message.clone(), BytesMut::freeze)
            )))
        });
        let mut response = Response::builder()
            .content_type("text/event-stream")
            .header("X-Accel-Buffering", "no")
            .header("Cache-Control", "no-cache");
        if let Some(after) = after {
            response = response.header(EVENTS_AFTER, after.to_string());
        }
        response.body(Body::from_bytes_stream(writes))
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgPoolOptions;

    use super::*;

    fn event(seq: i64, event: &str) -> Arc<SharedEvent> {
        Arc::new(SharedEvent::new(EventRecord {
            seq,
            ts: Utc::now(),
            tenant_id: Some(Uuid::now_v7()),
            job_id: Some(Uuid::now_v7()),
            queue: Some("executor".to_owned()),
            kind: Some("executor.run".to_owned()),
            event: event.to_owned(),
            actor: "worker-1".to_owned(),
            details: serde_json::json!({"attempt": 1, "note": "line one\nline two"}),
        }))
    }

    #[tokio::test]
    async fn sse_answers_write_waiting_events_together_as_poem_would_write_each() {
        let sent = [
            event(1, "job_enqueued"),
            event(2, "job_started"),
            event(3, "job_succeeded"),
        ];
        // Three events wait at once, then nothing comes for a while, then the stream ends.
        let (tx, mut rx) = mpsc::channel::<StreamItem>(8);
        for shared in &sent {
            tx.send(StreamItem(shared.clone())).await.unwrap();
        }
        let response = SseResponse {
            after: Some(0),
            events: Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))),
            keep_alive: Duration::from_millis(50),
        }
        .into_response();
        assert_eq!(response.content_type(), Some("text/event-stream"));
        assert_eq!(response.headers()["cache-control"], "no-cache");
        assert_eq!(response.headers()[EVENTS_AFTER], "0");
        let mut body = response.into_body().into_bytes_stream();

        let first = body.next().await.unwrap().unwrap();
        let poem_would_write: String = sent
            .iter()
            .map(|shared| {
                poem::web::sse::Event::message(serde_json::to_string(&shared.record).unwrap())
                    .id(shared.record.seq.to_string())
                    .event_type(shared.record.event.clone())
                    .to_string()
            })
            .collect();
        assert_eq!(
            std::str::from_utf8(&first).unwrap(),
            poem_would_write,
            "one write, same bytes"
        );

        let idle = body.next().await.unwrap().unwrap();
        assert_eq!(&idle[..], b":\n\n", "a keep-alive comment while idle");
        drop(tx);
        assert!(
            body.next().await.is_none(),
            "the answer ends with its events"
        );
    }

    /// A hub reader whose Postgres cannot be reached: every read fails at once.
    fn reader() -> HubReader {
        let (sender, _) = broadcast::channel(16);
        let pool = PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(100))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        HubReader {
            events: EventLog::new(pool),
            sender,
            last_seq: 0,
            head: Arc::new(AtomicI64::new(0)),
        }
    }

    #[tokio::test]
    async fn without_clients_the_hub_notes_the_numbering_without_reading_events() {
        let mut reader = reader();
        reader.numbered_up_to(3).await;
        reader.numbered_up_to(7).await;
        // Had it read Postgres, the read would have failed and left it at 0.
        assert_eq!(reader.last_seq, 7);
        assert_eq!(
            reader.head.load(Ordering::Acquire),
            7,
            "a stream opened now begins after 7"
        );
        reader.numbered_up_to(5).await;
        assert_eq!(reader.last_seq, 7, "an older notice changes nothing");
    }

    #[tokio::test]
    async fn with_clients_events_it_could_not_read_are_not_skipped() {
        let mut reader = reader();
        let mut client = reader.sender.subscribe();
        reader.numbered_up_to(3).await;
        assert_eq!(
            reader.last_seq, 0,
            "the next notice or quiet check reads them again"
        );
        assert!(client.try_recv().is_err());
    }
}
