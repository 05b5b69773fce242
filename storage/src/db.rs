//! Postgres connection and migrations.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Connection, Executor, PgPool, Row,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgSslMode},
};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The Postgres pools of a process: the one shared by the ledger and every store, and a few
/// connections for the ledger's statements about a few jobs ([`crate::Ledger`]).
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: PgPool,
    /// Connections whose statements always run on their generic plans.
    pub(crate) generic_plans: PgPool,
    limits: StatementLimits,
}

/// Why the migrations were not applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(
        "DATABASE_URL leads to a connection pooler in transaction mode (one connection's \
         statements ran on different Postgres server processes): taskfleet keeps prepared \
         statements, settings and LISTEN per connection. Use session pooling (pgbouncer: \
         pool_mode = session) or connect to Postgres directly"
    )]
    TransactionPooler,
    // Not a `source`: sqlx's message already holds its cause's, which a report of the
    // chain would print twice.
    #[error("{0}")]
    Postgres(sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for MigrationError {
    fn from(err: sqlx::Error) -> MigrationError {
        MigrationError::Postgres(err)
    }
}

/// Connections kept for the ledger's statements about a few jobs: they come one or two at a
/// time, while a busy fleet groups its jobs into batches on the main pool.
pub const GENERIC_PLAN_CONNECTIONS: u32 = 4;

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
    /// comes up, answers health checks, and works once Postgres answers. The process opens
    /// at most `max_connections`, plus [`GENERIC_PLAN_CONNECTIONS`] (no more than
    /// `max_connections`), plus one per listener ([`listen`]) and two while it migrates ([`Db::migrate`]).
    pub fn connect_lazy_limited(
        url: &str,
        max_connections: u32,
        limits: StatementLimits,
    ) -> Result<Db, sqlx::Error> {
        // Nothing but the standard startup parameters, which pgbouncer relays: it refuses
        // others ("unsupported startup parameter"), and Postgres 12 and later print floats
        // exactly without `extra_float_digits`.
        let mut options = PgConnectOptions::from_str(url)?.extra_float_digits(None);
        // libpq's default, `prefer`, would encrypt a connection over loopback too, where TLS
        // guards nothing and costs every statement of the ledger; a URL's `sslmode` (or
        // `PGSSLMODE`) is obeyed wherever Postgres is.
        if !ssl_mode_chosen(url) && on_this_host(&options) {
            options = options.ssl_mode(PgSslMode::Disable);
        }
        tls_files_readable(url)?;
        // Custom plans always: one statement serves a tenant and an operator
        // (`$1::uuid IS NULL OR tenant_id = $1`, `Scope::tenant_id`), and a generic plan,
        // which Postgres may settle on after a few calls, could not use the tenant index.
        // The ledger's statements about a few jobs run on connections of their own that
        // force the generic plan instead (`Ledger::pool_for`).
        let pool = pool_of(
            options.clone(),
            max_connections,
            session_settings(&limits, "force_custom_plan", limits.statement_timeout_ms),
        );
        let generic_plans = pool_of(
            options,
            GENERIC_PLAN_CONNECTIONS.min(max_connections),
            session_settings(&limits, "force_generic_plan", limits.statement_timeout_ms),
        );
        Ok(Db {
            pool,
            generic_plans,
            limits,
        })
    }

    /// Applies the migrations on a connection of their own, outside the pool and without its
    /// statement timeout: building an index over a large ledger may take longer than any
    /// statement of the running fleet may, and the pool's connections keep their limits
    /// whatever happens here. Lock waits stay bounded: a migration stuck behind a long
    /// transaction fails rather than hold every query on its table up behind it.
    /// A connection pooler in transaction mode is refused first
    /// ([`Db::require_session_pooling`]).
    pub async fn migrate(&self) -> Result<(), MigrationError> {
        self.require_session_pooling().await?;
        let mut conn = sqlx::PgConnection::connect_with(&self.pool.connect_options()).await?;
        sqlx::raw_sql(&session_settings(&self.limits, "auto", 0))
            .execute(&mut conn)
            .await?;
        let migrated = MIGRATOR.run(&mut conn).await;
        let _ = conn.close().await;
        Ok(migrated?)
    }

    /// Refuses a connection pooler in transaction mode, such as pgbouncer's
    /// `pool_mode = transaction`, which hands each transaction whichever server connection
    /// is free (statement mode refuses the probe's transaction itself, and that error stops
    /// the process): the fleet keeps state per connection (prepared statements, its settings, the
    /// migrations' advisory lock, `LISTEN`) and would fail at random. Session pooling, and
    /// Postgres itself, pass.
    ///
    /// Two connections: the first ends a statement, the second holds a transaction open,
    /// the first runs another. Under session pooling each keeps its server process; a
    /// transaction pooler gives the second the server the first just released, or the first
    /// another one. On a busy pooler another client may take the released server back and
    /// forth in between, which one round would not see: the rounds repeat, and the first's
    /// server must never change.
    async fn require_session_pooling(&self) -> Result<(), MigrationError> {
        const ROUNDS: usize = 8;
        let options = self.pool.connect_options();
        let mut first = sqlx::PgConnection::connect_with(&options).await?;
        let mut second = sqlx::PgConnection::connect_with(&options).await?;
        // The simple protocol: a prepared statement would not survive a transaction pooler.
        let pid = "SELECT pg_backend_pid()";
        let before: i32 = sqlx::raw_sql(pid).fetch_one(&mut first).await?.try_get(0)?;
        let mut pooled = false;
        for _ in 0..ROUNDS {
            sqlx::raw_sql("BEGIN").execute(&mut second).await?;
            let held: i32 = sqlx::raw_sql(pid)
                .fetch_one(&mut second)
                .await?
                .try_get(0)?;
            let after: i32 = sqlx::raw_sql(pid).fetch_one(&mut first).await?.try_get(0)?;
            sqlx::raw_sql("ROLLBACK").execute(&mut second).await?;
            if held == before || after != before {
                pooled = true;
                break;
            }
        }
        let _ = first.close().await;
        let _ = second.close().await;
        if pooled {
            return Err(MigrationError::TransactionPooler);
        }
        Ok(())
    }

    /// Applies the migrations, waiting while Postgres cannot be reached, so a process started
    /// before Postgres comes up once it does. What waiting cannot mend (a migration this
    /// build does not know, one changed since it was applied, one Postgres refuses, a
    /// database that does not exist) comes back at once, so the process stops and says why
    /// instead of retrying forever.
    pub async fn migrate_when_reachable(&self) -> Result<(), MigrationError> {
        crate::retry_while(
            "Postgres (migrations)",
            || self.migrate(),
            |err| match err {
                MigrationError::Postgres(err)
                | MigrationError::Migrate(sqlx::migrate::MigrateError::Execute(err)) => {
                    unreachable(err)
                }
                _ => false,
            },
        )
        .await
    }

    /// Closes every connection of both pools, waiting for those in use to be given back.
    pub async fn close(&self) {
        tokio::join!(self.pool.close(), self.generic_plans.close());
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

/// Whether the URL (or the environment, which sqlx reads) says how to use TLS.
fn ssl_mode_chosen(url: &str) -> bool {
    std::env::var_os("PGSSLMODE").is_some()
        || url::Url::parse(url).is_ok_and(|url| {
            url.query_pairs()
                .any(|(name, _)| name == "sslmode" || name == "ssl-mode")
        })
}

/// Checks that the TLS files the URL names can be read: sqlx reads them at each connection,
/// and one missing there is an I/O error like an outage's, which would be waited out.
fn tls_files_readable(url: &str) -> Result<(), sqlx::Error> {
    let Ok(url) = url::Url::parse(url) else {
        return Ok(());
    };
    for (name, path) in url.query_pairs() {
        let names_a_file = matches!(
            &*name,
            "sslrootcert"
                | "ssl-root-cert"
                | "ssl-ca"
                | "sslcert"
                | "ssl-cert"
                | "sslkey"
                | "ssl-key"
        );
        if names_a_file && let Err(err) = std::fs::File::open(&*path) {
            return Err(sqlx::Error::Configuration(
                format!("{name} {path}: {err}").into(),
            ));
        }
    }
    Ok(())
}

/// Whether the options lead to a Postgres on this host: a Unix socket, or a loopback address.
fn on_this_host(options: &PgConnectOptions) -> bool {
    let host = options.get_host();
    options.get_socket().is_some()
        || host.starts_with('/')
        || host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `err` says Postgres could not be reached, or is not accepting connections yet.
/// Not a TLS handshake that failed ([`crate::tls_failed`]), nor a TLS setting that cannot
/// work (`sqlx::Error::Tls`: TLS required of a server without it, a PEM that does not parse).
fn unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(io) => !crate::tls_failed(io),
        sqlx::Error::PoolTimedOut => true,
        // Connection exceptions (class 08), and "the database system is starting up" or
        // "shutting down" (57P03, 57P01); not a protocol violation (08P01), which pgbouncer
        // in statement mode answers a transaction with, and waiting does not mend.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            (code.starts_with("08") && code != "08P01") || code == "57P03" || code == "57P01"
        }),
        _ => false,
    }
}

/// The settings every connection of a pool makes when it opens, sent as statements rather
/// than as startup options, which pgbouncer refuses ("unsupported startup parameter").
/// No JIT: the ledger runs short statements whose cost the planner can overestimate by
/// orders of magnitude (over a backlog not yet analyzed, say), and JIT then compiles for far
/// longer than the statement runs (ADR 0007).
fn session_settings(
    limits: &StatementLimits,
    plan_cache_mode: &str,
    statement_timeout_ms: u64,
) -> String {
    format!(
        "SET jit = off; SET plan_cache_mode = {plan_cache_mode}; \
         SET statement_timeout = {statement_timeout_ms}; SET lock_timeout = {}",
        limits.lock_timeout_ms
    )
}

/// A pool of at most `max_connections` that connects lazily and makes `settings` on every
/// new connection.
fn pool_of(options: PgConnectOptions, max_connections: u32, settings: String) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .after_connect(move |conn, _| {
            let settings = settings.clone();
            Box::pin(async move {
                // A query without arguments goes by the simple protocol, several statements
                // in one round trip.
                conn.execute(settings.as_str()).await?;
                Ok(())
            })
        })
        .connect_lazy_with(options)
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
    use sqlx::postgres::PgSslMode;

    use super::{Db, MIGRATOR, StatementLimits};

    #[tokio::test]
    async fn tls_is_off_on_this_host_unless_the_url_asks_and_preferred_elsewhere() {
        let mode = |url: &str| {
            Db::connect_lazy(url, 1)
                .unwrap()
                .pool
                .connect_options()
                .get_ssl_mode()
        };
        let disabled = |mode| matches!(mode, PgSslMode::Disable);
        assert!(disabled(mode("postgres://postgres@127.0.0.1:5432/x")));
        assert!(disabled(mode("postgres://postgres@localhost/x")));
        assert!(disabled(mode("postgres://postgres@[::1]:5432/x")));
        assert!(disabled(mode("postgres:///x?host=/var/run/postgresql")));
        assert!(matches!(
            mode("postgres://postgres@127.0.0.1/x?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://postgres@db.example.com/x"),
            PgSslMode::Prefer
        ));
        assert!(matches!(
            mode("postgres://postgres@db.example.com/x?sslmode=verify-full"),
            PgSslMode::VerifyFull
        ));
    }

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
