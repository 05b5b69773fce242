//! Postgres connection and migrations.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Connection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The Postgres pool shared by the ledger and the tenant store.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: PgPool,
}

/// Bounds every statement of a process's connections: a statement stuck behind a lock, or
/// one the planner got badly wrong, fails with an error the caller retries or reports,
/// instead of holding a connection (and its locks) for ever.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct StatementLimits {
    /// Longest a statement may run, in milliseconds (Postgres `statement_timeout`).
    #[arg(long = "pg-statement-timeout-ms", env = "TASKFLEET_PG_STATEMENT_TIMEOUT_MS",
          default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub statement_timeout_ms: u64,
    /// Longest a statement may wait for a lock, in milliseconds (Postgres `lock_timeout`).
    #[arg(long = "pg-lock-timeout-ms", env = "TASKFLEET_PG_LOCK_TIMEOUT_MS",
          default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub lock_timeout_ms: u64,
}

impl Default for StatementLimits {
    fn default() -> StatementLimits {
        StatementLimits {
            statement_timeout_ms: 60_000,
            lock_timeout_ms: 10_000,
        }
    }
}

impl Db {
    /// [`Db::connect_lazy_limited`] with the default [`StatementLimits`].
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Db, sqlx::Error> {
        Db::connect_lazy_limited(url, max_connections, StatementLimits::default())
    }

    /// Connects without waiting for Postgres: a process that starts while Postgres is down
    /// comes up, answers health checks, and works once Postgres answers.
    pub fn connect_lazy_limited(
        url: &str,
        max_connections: u32,
        limits: StatementLimits,
    ) -> Result<Db, sqlx::Error> {
        // No JIT: the ledger runs short statements whose cost the planner can overestimate
        // by orders of magnitude (over a backlog not yet analyzed, say), and JIT then
        // compiles for far longer than the statement runs (ADR 0007).
        // Custom plans always: one statement serves a tenant and an operator
        // (`$1::uuid IS NULL OR tenant_id = $1`, `Scope::tenant_id`), and a generic plan,
        // which Postgres may settle on after a few calls, could not use the tenant index.
        // The ledger's statements about a few jobs run on connections of their own that
        // force the generic plan instead (`Ledger::pool_for`).
        let options = PgConnectOptions::from_str(url)?.options([
            ("jit", "off".to_owned()),
            ("plan_cache_mode", "force_custom_plan".to_owned()),
            ("statement_timeout", limits.statement_timeout_ms.to_string()),
            ("lock_timeout", limits.lock_timeout_ms.to_string()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Ok(Db { pool })
    }

    /// Applies the migrations on a connection of their own, outside the pool and without its
    /// statement timeout: building an index over a large ledger may take longer than any
    /// statement of the running fleet may, and the pool's connections keep their limits
    /// whatever happens here. Lock waits stay bounded: a migration stuck behind a long
    /// transaction fails rather than hold every query on its table up behind it.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let options = (*self.pool.connect_options())
            .clone()
            .options([("statement_timeout", "0")]);
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let migrated = MIGRATOR.run(&mut conn).await;
        let _ = conn.close().await;
        migrated
    }

    /// Applies the migrations, waiting while Postgres cannot be reached, so a process started
    /// before Postgres comes up once it does. What waiting cannot mend (a migration this
    /// build does not know, one changed since it was applied, one Postgres refuses, a
    /// database that does not exist) comes back at once, so the process stops and says why
    /// instead of retrying forever.
    pub async fn migrate_when_reachable(&self) -> Result<(), sqlx::migrate::MigrateError> {
        crate::retry_while(
            "Postgres (migrations)",
            || self.migrate(),
            |err| matches!(err, sqlx::migrate::MigrateError::Execute(err) if unreachable(err)),
        )
        .await
    }

    /// True when every migration this build knows has been applied successfully.
    pub async fn migrations_applied(&self) -> Result<bool, sqlx::Error> {
        // sqlx's own table, which its migrator makes (the check database has it too).
        let applied = sqlx::query_scalar!("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await?;
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }
}

/// Whether `err` says Postgres could not be reached, or is not accepting connections yet.
fn unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        // Connection exceptions (class 08), and "the database system is starting up" or
        // "shutting down" (57P03, 57P01).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code == "57P03" || code == "57P01"),
        _ => false,
    }
}

/// A listener for `channel`'s notifications (migration 0010), on a connection of its own so
/// that it never holds one of `pool`'s.
pub(crate) async fn listen(pool: &PgPool, channel: &str) -> sqlx::Result<PgListener> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(pool.options().get_acquire_timeout())
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::{Db, MIGRATOR, StatementLimits};

    #[test]
    fn every_migration_file_is_built_in() {
        // The checkout being tested, as `cargo test` says when it runs the test: a build
        // reused from another checkout through a shared target directory carries that
        // checkout's path in `env!`, which may be gone.
        let package = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let files = std::fs::read_dir(std::path::Path::new(&package).join("migrations"))
            .expect("the migrations directory")
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
            })
            .count();
        assert_eq!(MIGRATOR.iter().count(), files);
    }

    #[tokio::test]
    async fn connections_bound_their_statements_and_lock_waits() {
        let url = std::env::var("TASKFLEET_TEST_ADMIN_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let limits = StatementLimits {
            statement_timeout_ms: 300,
            lock_timeout_ms: 200,
        };
        let db = Db::connect_lazy_limited(&url, 1, limits).unwrap();
        let err = sqlx::query("SELECT pg_sleep(5)")
            .execute(&db.pool)
            .await
            .unwrap_err();
        // 57014: canceling statement due to statement timeout.
        assert_eq!(
            err.as_database_error().and_then(|db| db.code()).as_deref(),
            Some("57014")
        );
        let holder = Db::connect_lazy(&url, 1).unwrap();
        let mut tx = holder.pool.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock(231123)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let err = sqlx::query("SELECT pg_advisory_lock(231123)")
            .execute(&db.pool)
            .await
            .unwrap_err();
        // 55P03: lock not available.
        assert_eq!(
            err.as_database_error().and_then(|db| db.code()).as_deref(),
            Some("55P03")
        );
        tx.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn connections_run_without_jit() {
        let url = std::env::var("TASKFLEET_TEST_ADMIN_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let db = Db::connect_lazy(&url, 1).unwrap();
        let jit: String = sqlx::query_scalar("SHOW jit")
            .fetch_one(&db.pool)
            .await
            .expect("Postgres answers");
        assert_eq!(jit, "off");
    }
}
