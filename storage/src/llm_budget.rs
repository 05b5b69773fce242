//! Tokens: what every LLM call spent, and each tenant's monthly budget.
//!
//! A call that a budget covers first reserves the most it can cost (its prompt and its
//! `max_tokens`), under a per-tenant advisory lock, against this month's usage plus the
//! reservations still held; then it is sent, and settles: its reservation goes and its real
//! usage is recorded, in one transaction. Parallel calls on several workers therefore never
//! hold more than the budget between them, and the month can overrun it only by what calls
//! spend beyond their reservation. A worker that dies mid-call leaves a reservation that
//! stops counting when it expires.
//!
//! The month is the calendar month in UTC. The budget is the tenant's override
//! (`tenants.llm_monthly_tokens`, set by an operator) or the fleet's default; with neither,
//! calls are recorded and nothing is refused.

use std::time::Duration;

use chrono::{DateTime, Months, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// The most tokens of one model answer (`max_tokens`): every call reserves this much beyond
/// its prompt, so a budget with less left than this fits no call.
pub const ANSWER_TOKENS: i64 = 1_024;

/// What an LLM call was for: `llm_usage.purpose`, the `kind` of `GET /v1/usage` and of
/// `taskfleet_llm_tokens_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmCallKind {
    Chat,
    Prioritise,
    Embed,
    Test,
}

impl LlmCallKind {
    pub fn name(self) -> String {
        taskfleet_jobs::wire::name(&self)
    }
}

/// The tokens one LLM call (or one run of several calls) spent.
#[derive(Debug, Clone)]
pub struct LlmUsage<'a> {
    pub tenant: Uuid,
    pub job: Option<Uuid>,
    pub model: &'a str,
    pub kind: LlmCallKind,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// A tenant's budget this month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetStatus {
    /// None: no budget applies.
    pub limit: Option<i64>,
    /// Whether `limit` is the tenant's own (an operator's override) rather than the fleet's.
    pub overridden: bool,
    /// Spent this month.
    pub used: i64,
    /// Held by calls in flight.
    pub reserved: i64,
    /// Whether a chat call did not fit this month under the budget now in force.
    pub refused: bool,
    pub month_start: DateTime<Utc>,
    pub resets_at: DateTime<Utc>,
}

impl BudgetStatus {
    /// What may still be reserved.
    pub fn remaining(&self) -> Option<i64> {
        self.limit
            .map(|limit| (limit - self.used - self.reserved).max(0))
    }

    /// Whether the month's budget is spent, so new chat jobs are refused: a chat call did not
    /// fit, or what is spent leaves no room for an answer. Calls in flight do not count here:
    /// they settle below what they hold, and a burst of chats must not close the door.
    pub fn exhausted(&self) -> bool {
        self.limit
            .is_some_and(|limit| self.refused || limit - self.used < ANSWER_TOKENS)
    }
}

/// This month's tokens of one kind of call and one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    pub purpose: String,
    pub model: String,
    pub calls: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Tokens held for a call in flight; settle it with [`Budgets::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// None when no budget applies (nothing was held).
    id: Option<i64>,
    pub tokens: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The call does not fit in what is left of the month's budget.
    #[error(
        "the tenant's monthly LLM budget of {limit} tokens is spent ({used} used, {reserved} \
         held by calls in flight, {wanted} wanted); it resets at {resets_at}"
    )]
    Exceeded {
        limit: i64,
        used: i64,
        reserved: i64,
        wanted: i64,
        resets_at: DateTime<Utc>,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
pub struct Budgets {
    pool: PgPool,
    /// `TASKFLEET_LLM_MONTHLY_TOKENS`.
    fleet_default: Option<i64>,
}

/// The first instant of the month of `now`, in UTC, and of the next.
pub fn month_of(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = now.date_naive();
    let first = day - chrono::Days::new(u64::from(chrono::Datelike::day(&day)) - 1);
    let start = first.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let next = start
        .checked_add_months(Months::new(1))
        .expect("a month later is representable");
    (start, next)
}

impl Budgets {
    pub fn new(pool: PgPool, fleet_default: Option<i64>) -> Budgets {
        Budgets {
            pool,
            fleet_default,
        }
    }

    /// The tenant's budget and what this month has used of it.
    pub async fn status(&self, tenant: Uuid) -> sqlx::Result<BudgetStatus> {
        let mut conn = self.pool.acquire().await?;
        status_on(&mut conn, tenant, self.fleet_default).await
    }

    /// Holds `tokens` of the tenant's budget for a call, for at most `hold` (past it, a call
    /// never settled stops counting).
    /// A chat call that does not fit in what the month has spent closes the door to new chat
    /// jobs until the month ends or the budget changes; other kinds of call, and calls that
    /// only wait on others in flight, do not.
    pub async fn reserve(
        &self,
        tenant: Uuid,
        job: Option<Uuid>,
        kind: LlmCallKind,
        tokens: i64,
        hold: Duration,
    ) -> Result<Reservation, ReserveError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "SELECT pg_advisory_xact_lock(hashtextextended('llm_budget:' || $1, 0))",
            tenant.to_string(),
        )
        .execute(&mut *tx)
        .await?;
        let status = status_on(&mut tx, tenant, self.fleet_default).await?;
        let Some(limit) = status.limit else {
            return Ok(Reservation { id: None, tokens });
        };
        // Reservations nobody settled (their worker died) have expired: clear them away.
        sqlx::query!(
            "DELETE FROM llm_reservations WHERE tenant_id = $1 AND expires_at <= now()",
            tenant,
        )
        .execute(&mut *tx)
        .await?;
        if status.used + status.reserved + tokens > limit {
            if kind == LlmCallKind::Chat && status.used + tokens > limit {
                sqlx::query!(
                    "UPDATE tenants SET llm_budget_refused_at = now(),
                                        llm_budget_refused_limit = $2
                     WHERE id = $1",
                    tenant,
                    limit,
                )
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            return Err(ReserveError::Exceeded {
                limit,
                used: status.used,
                reserved: status.reserved,
                wanted: tokens,
                resets_at: status.resets_at,
            });
        }
        let id: i64 = sqlx::query_scalar!(
            "INSERT INTO llm_reservations (tenant_id, job_id, tokens, expires_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4))
             RETURNING id",
            tenant,
            job,
            tokens,
            hold.as_secs_f64(),
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Reservation {
            id: Some(id),
            tokens,
        })
    }

    /// Lets go of `reservation` and records what the call really spent (zeros for a call
    /// that got no answer), in one transaction.
    pub async fn settle(&self, reservation: &Reservation, usage: LlmUsage<'_>) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        if let Some(id) = reservation.id {
            sqlx::query!("DELETE FROM llm_reservations WHERE id = $1", id)
                .execute(&mut *tx)
                .await?;
        }
        if usage.input_tokens > 0 || usage.output_tokens > 0 {
            record_on(&mut tx, &usage).await?;
        }
        tx.commit().await
    }

    /// Records a call no budget was reserved for.
    pub async fn record(&self, usage: LlmUsage<'_>) -> sqlx::Result<()> {
        let mut conn = self.pool.acquire().await?;
        record_on(&mut conn, &usage).await
    }

    /// This month's tokens by kind of call and model.
    pub async fn usage_this_month(&self, tenant: Uuid) -> sqlx::Result<Vec<UsageLine>> {
        let (start, _) = month_of(Utc::now());
        // Each group has a row at least, so its count and sums are never null.
        sqlx::query_as!(
            UsageLine,
            r#"SELECT purpose, model, count(*) AS "calls!",
                      sum(input_tokens)::bigint AS "input_tokens!",
                      sum(output_tokens)::bigint AS "output_tokens!"
               FROM llm_usage WHERE tenant_id = $1 AND at >= $2
               GROUP BY purpose, model ORDER BY purpose, model"#,
            tenant,
            start,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Sets (or, with None, removes) the tenant's own monthly budget; `None` when there is no
    /// tenant of that name. A changed budget (this, or the fleet's default) opens the door a
    /// refused chat call closed.
    pub async fn set_override(
        &self,
        tenant_name: &str,
        tokens: Option<i64>,
    ) -> sqlx::Result<Option<Overridden>> {
        // The old value read under the row's lock, so it is the one this change replaced.
        sqlx::query_as!(
            Overridden,
            r#"UPDATE tenants t SET llm_monthly_tokens = $2
               FROM (SELECT id, llm_monthly_tokens FROM tenants WHERE name = $1 FOR UPDATE)
                   AS old
               WHERE t.id = old.id
               RETURNING t.id AS tenant_id, old.llm_monthly_tokens AS "previous?""#,
            tenant_name,
            tokens,
        )
        .fetch_optional(&self.pool)
        .await
    }
}

/// A tenant's own budget, set anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overridden {
    pub tenant_id: Uuid,
    /// The tenant's own budget before: none when the fleet's default applied.
    pub previous: Option<i64>,
}

async fn status_on(
    conn: &mut sqlx::PgConnection,
    tenant: Uuid,
    fleet_default: Option<i64>,
) -> sqlx::Result<BudgetStatus> {
    let (month_start, resets_at) = month_of(Utc::now());
    let row = sqlx::query!(
        r#"SELECT (SELECT llm_monthly_tokens FROM tenants WHERE id = $1) AS own,
                  coalesce((SELECT llm_budget_refused_at >= $2
                                   AND llm_budget_refused_limit = coalesce(llm_monthly_tokens, $3)
                            FROM tenants WHERE id = $1), false) AS "refused!",
                  (SELECT coalesce(sum(input_tokens + output_tokens), 0)::bigint
                   FROM llm_usage WHERE tenant_id = $1 AND at >= $2) AS "used!",
                  (SELECT coalesce(sum(tokens), 0)::bigint
                   FROM llm_reservations WHERE tenant_id = $1 AND expires_at > now())
                      AS "reserved!""#,
        tenant,
        month_start,
        fleet_default,
    )
    .fetch_one(&mut *conn)
    .await?;
    let own = row.own;
    Ok(BudgetStatus {
        limit: own.or(fleet_default),
        overridden: own.is_some(),
        used: row.used,
        reserved: row.reserved,
        refused: row.refused,
        month_start,
        resets_at,
    })
}

async fn record_on(conn: &mut sqlx::PgConnection, usage: &LlmUsage<'_>) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO llm_usage (tenant_id, job_id, model, purpose, input_tokens, output_tokens)
         VALUES ($1, $2, $3, $4, $5, $6)",
        usage.tenant,
        usage.job,
        usage.model,
        usage.kind.name(),
        usage.input_tokens,
        usage.output_tokens,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_calendar_months_in_utc() {
        let (start, next) = month_of("2026-12-31T23:59:59Z".parse().unwrap());
        assert_eq!(
            start,
            "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(
            next,
            "2027-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        let (start, _) = month_of("2026-02-01T00:00:00Z".parse().unwrap());
        assert_eq!(
            start,
            "2026-02-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn remaining_never_goes_below_zero() {
        let (month_start, resets_at) = month_of(Utc::now());
        let status = BudgetStatus {
            limit: Some(100),
            overridden: false,
            used: 90,
            reserved: 30,
            refused: false,
            month_start,
            resets_at,
        };
        assert_eq!(status.remaining(), Some(0));
        assert!(status.exhausted());
        let unlimited = BudgetStatus {
            limit: None,
            ..status
        };
        assert_eq!(unlimited.remaining(), None);
        assert!(!unlimited.exhausted());
        let refused_once = BudgetStatus {
            limit: Some(1_000_000),
            used: 0,
            reserved: 0,
            refused: true,
            ..unlimited
        };
        assert!(
            refused_once.exhausted(),
            "a call that did not fit closes the door"
        );
        let busy = BudgetStatus {
            limit: Some(10_000),
            used: 1_000,
            reserved: 8_500,
            refused: false,
            ..refused_once
        };
        assert_eq!(busy.remaining(), Some(500));
        assert!(!busy.exhausted(), "calls in flight do not close the door");
    }
}
