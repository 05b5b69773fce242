//! A retention chore the leader runs: freeing old idempotency keys (finished jobs go with
//! the job cleaner, `crate::job_cleaner`).

use std::time::Duration;

use super::Ledger;

impl Ledger {
    /// Frees idempotency keys older than `retention`, so they may be used again.
    pub async fn expire_idempotency_keys(&self, retention: Duration) -> sqlx::Result<u64> {
        let done = sqlx::query!(
            "UPDATE jobs SET idempotency_key = NULL
             WHERE idempotency_key IS NOT NULL
               AND created_at < now() - make_interval(secs => $1)",
            retention.as_secs_f64()
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
