//! Postgres connection and migrations.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The Postgres pool shared by the ledger and the tenant store.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: PgPool,
}

impl Db {
    /// Connects without waiting for Postgres: a process that starts while Postgres is down
    /// comes up, answers health checks, and works once Postgres answers.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Db, sqlx::Error> {
        // No JIT: the ledger runs short statements whose cost the planner can overestimate
        // by orders of magnitude (a dispatch over an unanalyzed backlog was costed at 800k),
        // and JIT then spent 320 ms compiling a statement that runs in 8.
        let options = PgConnectOptions::from_str(url)?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Ok(Db { pool })
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
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
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
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
    use super::{Db, MIGRATOR};

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
