//! The event stream: the leader's sequencer appends how far events are numbered, one entry a
//! round; every API process reads it to learn when to read the new events from Postgres
//! (ADR 0004). The stream carries no events itself, so losing it loses nothing.

use std::time::Duration;

use redis::{
    AsyncCommands,
    streams::{StreamReadOptions, StreamReadReply},
};

use super::{Connection, Keys, RedisError};

/// The stream keeps about this many recent rounds; readers need only the newest.
const LENGTH: usize = 10_000;

/// Appends "events are numbered up to `last_seq`".
pub async fn announce_numbered(
    conn: &mut Connection,
    keys: &Keys,
    last_seq: i64,
) -> Result<(), RedisError> {
    let _: String = redis::cmd("XADD")
        .arg(keys.event_stream())
        .arg("MAXLEN")
        .arg("~")
        .arg(LENGTH)
        .arg("*")
        .arg("seq")
        .arg(last_seq)
        .query_async(conn)
        .await?;
    Ok(())
}

/// What [`read_numbered`] found after an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbered {
    /// The id to read after next time (unchanged when nothing came).
    pub last_id: String,
    /// The highest `seq` announced, if anything came.
    pub up_to: Option<i64>,
}

/// Waits up to `block` for entries after `last_id` (`$`: only new ones), reading at most
/// `count`, and returns the newest announcement among them.
pub async fn read_numbered(
    conn: &mut Connection,
    keys: &Keys,
    last_id: &str,
    block: Duration,
    count: usize,
) -> Result<Numbered, RedisError> {
    let options = StreamReadOptions::default()
        .block(block.as_millis() as usize)
        .count(count);
    let reply: StreamReadReply = conn
        .xread_options(&[keys.event_stream()], &[last_id], &options)
        .await?;
    let entries: Vec<_> = reply.keys.into_iter().flat_map(|key| key.ids).collect();
    Ok(Numbered {
        last_id: entries
            .last()
            .map_or_else(|| last_id.to_owned(), |entry| entry.id.clone()),
        // Only the newest notice matters: each says how far numbering has got.
        up_to: entries
            .iter()
            .filter_map(|entry| entry.get::<i64>("seq"))
            .max(),
    })
}
