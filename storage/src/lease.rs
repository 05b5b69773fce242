//! Leases in Redis: one holder at a time, expiring unless renewed, each grant carrying an
//! epoch that only grows. The leader election uses one; a holder that stalls past the ttl
//! loses it and cannot renew it back.

use std::time::Duration;

use redis::{Script, aio::ConnectionManager};

use crate::redis::RedisError;

/// `KEYS[1]` lease, `KEYS[2]` epoch counter; `ARGV[1]` holder, `ARGV[2]` ttl ms.
/// Grants the lease when free (raising the epoch), renews it when this holder has it.
/// Returns the epoch held, or 0 when another holder has the lease.
const ACQUIRE: &str = r#"
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
"#;

/// `KEYS[1]` lease; `ARGV[1]` holder|epoch. Deletes the lease only if it is still ours.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"#;

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
    pub async fn acquire(&self, conn: &mut ConnectionManager) -> Result<Option<u64>, RedisError> {
        let epoch: u64 = Script::new(ACQUIRE)
            .key(&self.key)
            .key(format!("{}:epoch", self.key))
            .arg(&self.holder)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(conn)
            .await?;
        Ok((epoch > 0).then_some(epoch))
    }

    /// Gives the lease up at once, so a successor need not wait for the ttl.
    pub async fn release(
        &self,
        conn: &mut ConnectionManager,
        epoch: u64,
    ) -> Result<(), RedisError> {
        let _: i64 = Script::new(RELEASE)
            .key(&self.key)
            .arg(format!("{}|{epoch}", self.holder))
            .invoke_async(conn)
            .await?;
        Ok(())
    }
}
