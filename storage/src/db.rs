//! Postgres connection and migrations.

use std::time::Duration;

use sqlx::{PgPool, migrate::Migrator, postgres::PgPoolOptions};

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
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(url)?;
        Ok(Db { pool })
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
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

#[cfg(test)]
mod tests {
    use super::MIGRATOR;

    #[test]
    fn every_migration_file_is_built_in() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let files = std::fs::read_dir(dir)
            .expect("the migrations directory")
            .filter(|entry| {
                entry
                    .as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
            })
            .count();
        assert_eq!(MIGRATOR.iter().count(), files);
    }
}
