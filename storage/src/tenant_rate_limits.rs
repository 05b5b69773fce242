//! Tenants' own API rate limits, set by an operator: per class of route (`submit`, `read`,
//! `stream`), a limit written as `TASKFLEET_RATE_LIMIT_*` writes one (`500/s:1000`, `off`), or
//! none for the fleet's default. The API parses the text before it stores it and each time it
//! reads the table back. A tenant on the defaults everywhere has no row.

use sqlx::PgPool;
use uuid::Uuid;

/// One tenant's limits per class; `None` where the fleet's default applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitOverride {
    pub submit: Option<String>,
    pub read: Option<String>,
    pub stream: Option<String>,
}

impl RateLimitOverride {
    /// Whether every class is left to the fleet's default.
    pub fn is_default(&self) -> bool {
        self.submit.is_none() && self.read.is_none() && self.stream.is_none()
    }
}

/// A tenant that has limits of its own, and what they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantOverride {
    pub tenant_id: Uuid,
    pub limits: RateLimitOverride,
}

#[derive(Debug, Clone)]
pub struct TenantRateLimits {
    pool: PgPool,
}

impl TenantRateLimits {
    pub fn new(pool: PgPool) -> TenantRateLimits {
        TenantRateLimits { pool }
    }

    /// Replaces the tenant's limits; all `None` removes its row.
    pub async fn set(&self, tenant: Uuid, limits: &RateLimitOverride) -> sqlx::Result<()> {
        if limits.is_default() {
            sqlx::query!(
                "DELETE FROM tenant_rate_limits WHERE tenant_id = $1",
                tenant
            )
            .execute(&self.pool)
            .await?;
            return Ok(());
        }
        sqlx::query!(
            "INSERT INTO tenant_rate_limits (tenant_id, submit, read, stream)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_id) DO UPDATE
                 SET submit = excluded.submit, read = excluded.read, stream = excluded.stream,
                     updated_at = now()",
            tenant,
            limits.submit,
            limits.read,
            limits.stream,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The tenant's own limits; all `None` when it has none.
    pub async fn get(&self, tenant: Uuid) -> sqlx::Result<RateLimitOverride> {
        let limits = sqlx::query_as!(
            RateLimitOverride,
            "SELECT submit, read, stream FROM tenant_rate_limits WHERE tenant_id = $1",
            tenant,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(limits.unwrap_or_default())
    }

    /// Every tenant that has limits of its own.
    pub async fn all(&self) -> sqlx::Result<Vec<TenantOverride>> {
        let rows = sqlx::query!("SELECT tenant_id, submit, read, stream FROM tenant_rate_limits")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| TenantOverride {
                tenant_id: row.tenant_id,
                limits: RateLimitOverride {
                    submit: row.submit,
                    read: row.read,
                    stream: row.stream,
                },
            })
            .collect())
    }
}
