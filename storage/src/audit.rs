//! The audit log: the changes an operator may later ask "who did that?" about (issue 25),
//! each with the acting key, the tenant acted upon, what was done and to what. Rows are only
//! added, for changes that happened, and deleted by the job cleaner once the longest job
//! retention has passed; reads page newest first by id (UUIDv7, like the jobs').
//!
//! A change whose storage function already runs a transaction writes its row in that
//! transaction ([`AuditLog::record_in`]: keys created and revoked, connectors created and
//! deleted); any other change is recorded by its caller right after it committed
//! ([`AuditLog::record`]).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use taskfleet_jobs::{AuditAction, wire};
use uuid::Uuid;

use crate::tenants::{Tenant, shown_key};

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The API key as `keys list` shows it (`tfk_ab12cd34…`); `cli:<user>` for the admin
    /// command line; `<tenant> (token: <sub>)` for a caller that authenticated with an
    /// identity provider's token (`<tenant> (token)` when it has no `sub`).
    pub name: String,
    /// The acting key's tenant; none from the command line.
    pub tenant_id: Option<Uuid>,
}

impl Actor {
    /// The key that authenticated a request.
    pub fn of(tenant: &Tenant) -> Actor {
        Actor {
            name: match (&tenant.key_prefix, &tenant.token_subject) {
                (Some(prefix), _) => shown_key(prefix),
                (None, Some(subject)) => format!("{} (token: {subject})", tenant.name),
                (None, None) => format!("{} (token)", tenant.name),
            },
            tenant_id: Some(tenant.id),
        }
    }

    /// `taskfleet-api`'s admin commands, run by the OS user `user` when known.
    pub fn command_line(user: Option<&str>) -> Actor {
        Actor {
            name: user.map_or_else(|| "cli".to_owned(), |user| format!("cli:{user}")),
            tenant_id: None,
        }
    }
}

/// One change, as the code that made it describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub action: AuditAction,
    /// The tenant acted upon; none for the fleet's own settings (queue pauses).
    pub tenant_id: Option<Uuid>,
    /// The id or name acted on.
    pub target: String,
    /// A few facts worth keeping (a budget's old and new value); never a secret.
    pub detail: Value,
}

impl AuditEntry {
    /// `action` on `target`, of `tenant_id`, with no detail.
    pub fn new(action: AuditAction, tenant_id: Option<Uuid>, target: impl ToString) -> AuditEntry {
        AuditEntry {
            action,
            tenant_id,
            target: target.to_string(),
            detail: Value::Object(Default::default()),
        }
    }

    pub fn with_detail(self, detail: Value) -> AuditEntry {
        AuditEntry { detail, ..self }
    }
}

/// An audit event as read back, with the names of its tenants.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub tenant_id: Option<Uuid>,
    pub tenant: Option<String>,
    pub actor: String,
    pub actor_tenant_id: Option<Uuid>,
    pub actor_tenant: Option<String>,
    pub action: AuditAction,
    pub target: String,
    pub detail: Value,
}

/// Which audit events a page holds: `None` means any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// The tenant acted upon.
    pub tenant_id: Option<Uuid>,
    pub action: Option<AuditAction>,
    /// At or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Older than this event (the previous page's last).
    pub before: Option<Uuid>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct AuditLog {
    pool: PgPool,
}

impl AuditLog {
    pub fn new(pool: PgPool) -> AuditLog {
        AuditLog { pool }
    }

    /// Records `entry`, made by `by`, on its own: after the change it describes committed.
    pub async fn record(&self, by: &Actor, entry: &AuditEntry) -> sqlx::Result<()> {
        AuditLog::record_in(&mut *self.pool.acquire().await?, by, entry).await
    }

    /// Records `entry`, made by `by`, on `conn`: inside the transaction of the change, so
    /// the change and its record commit together or not at all.
    pub async fn record_in(
        conn: &mut PgConnection,
        by: &Actor,
        entry: &AuditEntry,
    ) -> sqlx::Result<()> {
        sqlx::query!(
            "INSERT INTO audit_events (id, tenant_id, actor, actor_tenant_id, action, target,
                                       detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            Uuid::now_v7(),
            entry.tenant_id,
            &by.name,
            by.tenant_id,
            wire::name(&entry.action),
            &entry.target,
            &entry.detail,
        )
        .execute(conn)
        .await?;
        Ok(())
    }

    /// A page of the events `filter` selects, newest first.
    pub async fn list(&self, filter: &AuditFilter) -> sqlx::Result<Vec<AuditRecord>> {
        let rows = sqlx::query!(
            r#"SELECT a.id, a.at, a.tenant_id, t.name AS "tenant?", a.actor, a.actor_tenant_id,
                      w.name AS "actor_tenant?", a.action, a.target, a.detail
               FROM audit_events a
               LEFT JOIN tenants t ON t.id = a.tenant_id
               LEFT JOIN tenants w ON w.id = a.actor_tenant_id
               WHERE ($1::uuid IS NULL OR a.tenant_id = $1)
                 AND ($2::text IS NULL OR a.action = $2)
                 AND ($3::timestamptz IS NULL OR a.at >= $3)
                 AND ($4::uuid IS NULL OR a.id < $4)
               ORDER BY a.id DESC LIMIT $5"#,
            filter.tenant_id,
            filter.action.as_ref().map(wire::name),
            filter.since,
            filter.before,
            filter.limit,
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                // Only `record_in` writes the column, from an `AuditAction`.
                let action = wire::parse(&row.action).ok_or_else(|| {
                    sqlx::Error::Decode(format!("unknown audit action `{}`", row.action).into())
                })?;
                Ok(AuditRecord {
                    id: row.id,
                    at: row.at,
                    tenant_id: row.tenant_id,
                    tenant: row.tenant,
                    actor: row.actor,
                    actor_tenant_id: row.actor_tenant_id,
                    actor_tenant: row.actor_tenant,
                    action,
                    target: row.target,
                    detail: row.detail,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::Role;

    #[test]
    fn an_actor_is_its_key_as_keys_list_shows_it() {
        let tenant = Tenant {
            id: Uuid::now_v7(),
            name: "acme".into(),
            role: Role::Operator,
            key_id: Some(Uuid::now_v7()),
            key_prefix: Some("tfk_ab12cd34".into()),
            token_subject: None,
        };
        let by = Actor::of(&tenant);
        assert_eq!(by.name, "tfk_ab12cd34…");
        assert_eq!(by.tenant_id, Some(tenant.id));
        let token = Tenant {
            key_id: None,
            key_prefix: None,
            token_subject: Some("ana@acme.test".into()),
            ..tenant
        };
        assert_eq!(Actor::of(&token).name, "acme (token: ana@acme.test)");
        let anonymous = Tenant {
            token_subject: None,
            ..token
        };
        assert_eq!(Actor::of(&anonymous).name, "acme (token)");
        assert_eq!(Actor::command_line(Some("ana")).name, "cli:ana");
        assert_eq!(Actor::command_line(None).name, "cli");
    }
}
