//! Server-Sent Events from the API, followed across lost connections: when a stream breaks,
//! it is opened again with `Last-Event-ID` set to the last event read, so nothing after it
//! is missed and nothing is read twice. Before its first event a stream resumes from where
//! the API said it began (its `X-Events-After` header).

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

use reqwest::{Method, Response, header};
use serde_json::Value;

use crate::{api::Api, fail::Failure};

/// The API sends a keep-alive every 15 s; this long without a byte means the link is gone.
const SILENCE: Duration = Duration::from_secs(45);
/// The API's response header naming the event a stream begins after.
const EVENTS_AFTER: &str = "x-events-after";

/// The first pause before reconnecting, doubled at each failure in a row up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// The longest a `Retry-After` is heeded before trying again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// A job's own stream ends after one of these.
const TERMINAL: [&str; 3] = ["job_succeeded", "job_dead", "job_cancelled"];

/// One event: its id, its name and its JSON data.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

impl Message {
    pub fn ends_a_job(&self) -> bool {
        TERMINAL.contains(&self.event.as_str())
    }
}

/// What reading a stream gives.
pub enum Item {
    Event(Message),
    /// The connection broke and is being opened again (the reason, in words).
    Reconnecting(String),
}

/// How a stream ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Never, by itself (`/v1/events`): a close is a lost connection.
    Never,
    /// After a job's terminal event (`/v1/jobs/{id}/events`).
    AfterTerminal,
    /// When the server closes it; not resumable (`/v1/connectors/test-all`).
    WhenClosed,
}

pub struct EventStream {
    api: Api,
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    ending: Ending,
    last_id: Option<i64>,
    response: Option<Response>,
    parser: Parser,
    /// Whether the stream was ever open: one that never opened fails like any request.
    opened: bool,
    /// Whether the last event read ended the job: the server closes a job's stream after
    /// its end, and only after it (an old end replayed before a retry is followed by more).
    last_was_terminal: bool,
    pause: Duration,
    resume_at: Option<Instant>,
}

impl EventStream {
    pub fn new(
        api: &Api,
        method: Method,
        path: String,
        query: Vec<(&'static str, String)>,
        ending: Ending,
    ) -> EventStream {
        EventStream {
            api: api.clone(),
            method,
            path,
            query,
            ending,
            last_id: None,
            response: None,
            parser: Parser::default(),
            opened: false,
            last_was_terminal: false,
            pause: FIRST_PAUSE,
            resume_at: None,
        }
    }

    /// A job's own stream (`/v1/jobs/{id}/events`; with `events`, those and the job's end):
    /// its history, then what happens next, until it ends.
    pub fn of_job(api: &Api, id: &str, events: Option<&str>) -> EventStream {
        let query = events
            .map(|events| vec![("event", format!("{events},{}", TERMINAL.join(",")))])
            .unwrap_or_default();
        EventStream::new(
            api,
            Method::GET,
            format!("/v1/jobs/{id}/events"),
            query,
            Ending::AfterTerminal,
        )
    }

    /// Starts after event `id` rather than at the stream's own beginning.
    pub fn after(mut self, id: Option<i64>) -> EventStream {
        self.last_id = id;
        self
    }

    /// The next event, a note that the stream is being resumed, or `None` at its end. An
    /// answer of the API that is not a success (401, 404, …), or a stream that could not be
    /// opened at all, ends it with that failure.
    pub async fn next(&mut self) -> Result<Option<Item>, Failure> {
        loop {
            if let Some(message) = self.parser.messages.pop_front() {
                if message.id.is_some() {
                    self.last_id = message.id;
                }
                self.last_was_terminal = message.ends_a_job();
                // An event read: the link works again, so the next break starts from a short
                // pause (an answer that closes at once does not count).
                self.pause = FIRST_PAUSE;
                return Ok(Some(Item::Event(message)));
            }
            let Some(response) = self.response.as_mut() else {
                if let Some(at) = self.resume_at.take() {
                    tokio::time::sleep_until(at).await;
                }
                let opened = match tokio::time::timeout(SILENCE, self.connect()).await {
                    Ok(opened) => opened,
                    Err(_) => Err(self.broken("no answer")),
                };
                match opened {
                    Ok(response) => {
                        // Where a stream begins when asked for from now: a break before its
                        // first event resumes from there, not from a new now.
                        if self.last_id.is_none() {
                            self.last_id = response
                                .headers()
                                .get(EVENTS_AFTER)
                                .and_then(|after| after.to_str().ok()?.parse().ok());
                        }
                        self.response = Some(response);
                        self.opened = true;
                        continue;
                    }
                    Err(failure) => return self.lost(failure).map(Some),
                }
            };
            let read = match tokio::time::timeout(SILENCE, response.chunk()).await {
                Ok(Ok(Some(bytes))) => {
                    self.parser.feed(&bytes);
                    continue;
                }
                Ok(Ok(None)) => None,
                Ok(Err(err)) => Some(Failure::unreachable(self.api.url(), &err)),
                Err(_) => Some(self.broken(&format!("nothing heard for {} s", SILENCE.as_secs()))),
            };
            self.response = None;
            self.parser.reset();
            let failure = match read {
                Some(failure) => failure,
                None if self.ending == Ending::WhenClosed => return Ok(None),
                None if self.ending == Ending::AfterTerminal && self.last_was_terminal => {
                    return Ok(None);
                }
                None => self.broken("the server closed the stream"),
            };
            return self.lost(failure).map(Some);
        }
    }

    /// A connection that broke in a way the API did not say, as "did not answer".
    fn broken(&self, why: &str) -> Failure {
        Failure::Unreachable {
            url: self.api.url().to_owned(),
            why: why.to_owned(),
        }
    }

    async fn connect(&self) -> Result<Response, Failure> {
        let mut request = self
            .api
            .request(self.method.clone(), &self.path)
            .query(&self.query)
            .header(header::ACCEPT, "text/event-stream");
        if let Some(id) = self.last_id.filter(|_| self.ending != Ending::WhenClosed) {
            request = request.header("Last-Event-ID", id.to_string());
        }
        self.api.open(request).await
    }

    /// Decides what a broken or refused connection means: a refusal that waiting cannot
    /// mend ends the stream, and so does any failure of a stream never opened or not
    /// resumable; anything else is waited out (the pause is taken before the next
    /// connection, so the caller can say so first) and the stream resumed.
    fn lost(&mut self, failure: Failure) -> Result<Item, Failure> {
        // What a stream not resumable had sent is gone with its connection.
        if self.ending == Ending::WhenClosed && self.opened {
            return Err(failure);
        }
        let pause = match &failure {
            // Busy or briefly unavailable: asked again when it says, even before the stream
            // first opened (a submitted job's wait must not end on a rate limit).
            Failure::Api {
                status,
                retry_after,
                ..
            } if *status == 429 || *status >= 500 => retry_after
                .map(Duration::from_secs)
                .unwrap_or(self.pause)
                .clamp(FIRST_PAUSE, MAX_RETRY_AFTER),
            Failure::Api { .. } | Failure::Usage(_) => return Err(failure),
            // Nothing there at all: a wrong address fails at once, like any request.
            _ if !self.opened => return Err(failure),
            _ => self.pause,
        };
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        self.resume_at = Some(Instant::now() + pause);
        let reason = match failure {
            Failure::Unreachable { why, .. } => why,
            Failure::Api { message, .. } => message,
            other => other.to_string(),
        };
        let wait = format!("{:.1} s", pause.as_secs_f64());
        Ok(Item::Reconnecting(match self.last_id {
            Some(id) => format!("{reason}; resuming after event {id} in {wait}"),
            None => format!("{reason}; reconnecting in {wait}"),
        }))
    }
}

/// The text/event-stream format, fed in whatever pieces the network delivers.
#[derive(Default)]
struct Parser {
    line: Vec<u8>,
    id: Option<i64>,
    event: Option<String>,
    data: Option<String>,
    messages: VecDeque<Message>,
}

impl Parser {
    fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.line);
                let line = String::from_utf8_lossy(&line);
                self.line_ended(line.strip_suffix('\r').unwrap_or(&line));
            } else {
                self.line.push(byte);
            }
        }
    }

    fn line_ended(&mut self, line: &str) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            return; // a keep-alive comment
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.id = value.parse().ok(),
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let Some(data) = self.data.take() else {
            self.event = None;
            return;
        };
        let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
        self.messages.push_back(Message {
            id: self.id.take(),
            event: self.event.take().unwrap_or_else(|| "message".to_owned()),
            data,
        });
    }

    /// Forgets a half-read message of a connection that broke: it comes again whole.
    fn reset(&mut self) {
        self.line.clear();
        self.id = None;
        self.event = None;
        self.data = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_anywhere_are_read_whole() {
        let wire = b": keep-alive\n\nid: 7\nevent: job_progress\ndata: {\"percent\":50}\n\nid: 8\r\nevent: job_succeeded\r\ndata: {}\r\n\r\n";
        for split in 0..wire.len() {
            let mut parser = Parser::default();
            parser.feed(&wire[..split]);
            parser.feed(&wire[split..]);
            let read: Vec<_> = parser
                .messages
                .iter()
                .map(|m| (m.id, m.event.clone()))
                .collect();
            assert_eq!(
                read,
                [
                    (Some(7), "job_progress".to_owned()),
                    (Some(8), "job_succeeded".to_owned())
                ],
                "split at {split}"
            );
            assert_eq!(parser.messages[0].data["percent"], 50);
        }
    }

    #[test]
    fn a_message_cut_by_a_broken_connection_is_dropped_not_half_read() {
        let mut parser = Parser::default();
        parser.feed(b"id: 3\nevent: job_started\ndata: {\"attempt\"");
        parser.reset();
        parser.feed(b"id: 4\nevent: job_succeeded\ndata: {}\n\n");
        assert_eq!(parser.messages.len(), 1);
        assert_eq!(parser.messages[0].id, Some(4));
        assert_eq!(parser.messages[0].data, serde_json::json!({}));
    }
}
