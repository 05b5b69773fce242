//! Leases in Redis: one holder at a time, expiring unless renewed, each grant carrying an
//! epoch that only grows. The leader election uses one; a holder that stalls past the ttl
//! loses it and cannot renew it back. A job's holder that finds its lease gone because Redis
//! started empty (restarted or flushed) less than a ttl ago takes it back under its epoch.

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use crate::redis::{Connection, RedisError, pipeline_by_slot};

// The scripts are made once: making a `Script` hashes its source, and job leases are set
// and released for every job.

/// `KEYS[1]` lease, `KEYS[2]` epoch counter; `ARGV[1]` holder, `ARGV[2]` ttl ms.
/// Grants the lease when free (raising the epoch), renews it when this holder has it.
/// Returns the epoch held, or 0 when another holder has the lease.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if current then
    local holder, epoch = string.match(current, '^(.*)|(%d+)$')
    if holder == ARGV[1] then
        redis.call('PEXPIRE', KEYS[1], ARGV[2])
        return tonumber(epoch)
    end
    return 0
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. epoch, 'PX', ARGV[2])
return epoch
"#,
    )
});

/// `KEYS[1]` lease; `ARGV[1]` holder|epoch, `ARGV[2]` epoch, `ARGV[3]` ttl ms. Takes the lease
/// when it is absent, already ours, or held under a lower epoch; a late write from an older
/// attempt (its worker paused past the ttl) leaves the newer holder alone. 1 taken, 0 refused.
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
    local held = tonumber(string.match(current, '|(%d+)$'))
    if held and held >= tonumber(ARGV[2]) then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#,
    )
});

/// `KEYS[1]` lease; `ARGV[1]` holder|epoch. Deletes the lease only if it is still ours.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// `KEYS[1]` lease, `KEYS[2]` a flag to report; `ARGV[1]` holder|epoch, `ARGV[2]` ttl ms.
/// Renews the lease only if it is still ours: 0 another holder has it, 1 renewed, 2 renewed
/// and the flag is set, 3 nobody holds it.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if not current then
    return 3
end
if current ~= ARGV[1] then
    return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 2
end
return 1
"#,
    )
});

/// Lua that sets the key `born`, when Redis first answered for the fleet, to Redis's clock
/// (ms) unless it exists, and leaves in `age` how many ms ago it was set.
const KEYSPACE_AGE_LUA: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('SET', born, now, 'NX')
local age = now - tonumber(redis.call('GET', born))
"#;

/// `KEYS[1]` the keyspace's birth. Returns its age in ms.
static KEYSPACE_AGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "local born = KEYS[1]\n{KEYSPACE_AGE_LUA}\nreturn age"
    ))
});

/// `KEYS[1]` lease, `KEYS[2]` the keyspace's birth; `ARGV[1]` holder|epoch, `ARGV[2]` ttl ms.
/// Takes an absent lease back only while the keyspace is younger than a ttl: Redis lost the
/// lease (it started empty) rather than let it lapse. 1 taken, 0 refused.
static RETAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"local born = KEYS[2]
{KEYSPACE_AGE_LUA}
if age >= tonumber(ARGV[2]) or redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#
    ))
});

/// The answer of [`Lease::renew`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Someone else holds it now: stop acting on it.
    Lost,
    Renewed,
    /// Renewed, and the flag key named in the call exists.
    RenewedFlagged,
    /// Nobody holds it: it lapsed, or Redis lost it (restarted empty, or flushed).
    Absent,
}

#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    pub fn new(key: String, holder: String, ttl: Duration) -> Lease {
        Lease { key, holder, ttl }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes or renews the lease: `Some(epoch)` while we hold it, `None` while another does.
    pub async fn acquire(&self, conn: &mut Connection) -> Result<Option<u64>, RedisError> {
        let epoch: u64 = ACQUIRE
            .key(&self.key)
            .key(format!("{}:epoch", self.key))
            .arg(&self.holder)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(conn)
            .await?;
        Ok((epoch > 0).then_some(epoch))
    }

    /// Takes each lease with an epoch issued elsewhere (a job's epoch comes from the ledger's
    /// start, which only one worker can win), unless it is held under a newer epoch; one
    /// round trip for all of them. Returns, in order, whether each was taken.
    pub async fn hold_all(
        conn: &mut Connection,
        leases: &[(Lease, u64)],
    ) -> Result<Vec<bool>, RedisError> {
        let keys: Vec<String> = leases.iter().map(|(lease, _)| lease.key.clone()).collect();
        let taken: Vec<u8> = pipeline_by_slot(
            conn,
            &keys,
            // A pipeline does not load a script Redis has forgotten (after a restart) by itself.
            |pipe| {
                pipe.load_script(&HOLD).ignore();
            },
            |pipe, i| {
                let (lease, epoch) = &leases[i];
                pipe.invoke_script(
                    HOLD.key(&lease.key)
                        .arg(lease.token(*epoch))
                        .arg(*epoch)
                        .arg(lease.ttl.as_millis() as u64),
                );
            },
        )
        .await?;
        Ok(taken.into_iter().map(|taken| taken == 1).collect())
    }

    /// Extends the lease if we still hold it with `epoch`, and reports whether `flag` exists.
    pub async fn renew(
        &self,
        conn: &mut Connection,
        epoch: u64,
        flag: &str,
    ) -> Result<Renewal, RedisError> {
        let answer: u8 = RENEW
            .key(&self.key)
            .key(flag)
            .arg(self.token(epoch))
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(conn)
            .await?;
        Ok(match answer {
            0 => Renewal::Lost,
            1 => Renewal::Renewed,
            2 => Renewal::RenewedFlagged,
            _ => Renewal::Absent,
        })
    }

    /// Takes the lease back under `epoch` after Redis lost it: only while it is absent and
    /// Redis started empty less than a ttl ago ([`Lease::keyspace_ages`], `born` its key), so a
    /// lease that lapsed while Redis kept its keys, and may have been reclaimed, is not.
    /// Whether it was taken.
    pub async fn retake(
        &self,
        conn: &mut Connection,
        epoch: u64,
        born: &str,
    ) -> Result<bool, RedisError> {
        let taken: u8 = RETAKE
            .key(&self.key)
            .key(born)
            .arg(self.token(epoch))
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(conn)
            .await?;
        Ok(taken == 1)
    }

    /// How long Redis has held the fleet's keys at each of `keys` (keyspace births, one per
    /// job shard): since the first call after it started empty (restarted without
    /// persistence, or flushed), by Redis's clock. Every lease there is lost then; the
    /// reclaimer gives their holders a ttl to take them back before it reads an absent lease
    /// as lapsed. One pipeline per cluster slot.
    pub async fn keyspace_ages(
        conn: &mut Connection,
        keys: &[String],
    ) -> Result<Vec<Duration>, RedisError> {
        let ms: Vec<i64> = pipeline_by_slot(
            conn,
            keys,
            |pipe| {
                pipe.load_script(&KEYSPACE_AGE).ignore();
            },
            |pipe, i| {
                pipe.invoke_script(&KEYSPACE_AGE.key(&keys[i]));
            },
        )
        .await?;
        Ok(ms
            .into_iter()
            .map(|ms| Duration::from_millis(ms.max(0) as u64))
            .collect())
    }

    /// Who holds the lease at `key` now, if anyone.
    pub async fn holder(conn: &mut Connection, key: &str) -> Result<Option<String>, RedisError> {
        let value: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await?;
        Ok(value.and_then(|value| Some(value.rsplit_once('|')?.0.to_owned())))
    }

    /// The epochs of the leases at `keys`, `None` where a lease is absent: one `MGET`, or on
    /// a cluster one pipeline of `GET`s per slot, grouped here rather than by the cluster
    /// client's own split of an `MGET` (ADR 0018).
    pub async fn epochs(
        conn: &mut Connection,
        keys: &[String],
    ) -> Result<Vec<Option<u64>>, RedisError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = if conn.is_cluster() {
            pipeline_by_slot(
                conn,
                keys,
                |_| {},
                |pipe, i| {
                    pipe.get(&keys[i]);
                },
            )
            .await?
        } else {
            redis::cmd("MGET").arg(keys).query_async(conn).await?
        };
        Ok(values
            .into_iter()
            .map(|value| value?.rsplit_once('|')?.1.parse().ok())
            .collect())
    }

    fn token(&self, epoch: u64) -> String {
        format!("{}|{epoch}", self.holder)
    }

    /// Gives the lease up at once, so a successor need not wait for the ttl.
    pub async fn release(&self, conn: &mut Connection, epoch: u64) -> Result<(), RedisError> {
        Lease::release_all(conn, &[(self.clone(), epoch)]).await
    }

    /// Gives up each lease still held with its epoch (one taken over meanwhile stays with
    /// its new holder); one round trip for all of them.
    pub async fn release_all(
        conn: &mut Connection,
        leases: &[(Lease, u64)],
    ) -> Result<(), RedisError> {
        let keys: Vec<String> = leases.iter().map(|(lease, _)| lease.key.clone()).collect();
        let _released: Vec<u8> = pipeline_by_slot(
            conn,
            &keys,
            // A pipeline does not load a script Redis has forgotten (after a restart) by itself.
            |pipe| {
                pipe.load_script(&RELEASE).ignore();
            },
            |pipe, i| {
                let (lease, epoch) = &leases[i];
                pipe.invoke_script(RELEASE.key(&lease.key).arg(lease.token(*epoch)));
            },
        )
        .await?;
        Ok(())
    }
}
