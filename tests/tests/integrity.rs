//! What Postgres itself guarantees about jobs and tenants, whichever code writes: a job names
//! a tenant that exists and keeps it, and a tenant with jobs is neither deleted nor truncated.

use taskfleet_storage::{InsertError, Ledger, NewJob, Tenants};
use taskfleet_tests::{TestEnv, json};
use uuid::Uuid;

/// The SQLSTATE of the error a statement must have failed with.
fn sqlstate<T: std::fmt::Debug>(result: Result<T, sqlx::Error>) -> String {
    match result {
        Err(sqlx::Error::Database(err)) => err.code().expect("a SQLSTATE").into_owned(),
        other => panic!("expected a database error, got {other:?}"),
    }
}

fn noop() -> NewJob {
    NewJob::new(
        serde_json::from_value(json!({"kind": "executor.run", "tool": "noop"})).unwrap(),
        None,
    )
}

#[tokio::test]
async fn jobs_name_tenants_that_exist_and_keep_them() {
    let env = TestEnv::new().await;
    let ledger = Ledger::new(&env.db);
    let tenants = Tenants::new(env.pool.clone());
    let acme = tenants.ensure("acme").await.unwrap();
    let globex = tenants.ensure("globex").await.unwrap();

    // One statement holding a job of a tenant that does not exist lands none of its jobs.
    let refused = ledger
        .insert_for(&[acme.id, Uuid::now_v7()], &[noop(), noop()], &[], "test")
        .await;
    match refused {
        Err(InsertError::Db(sqlx::Error::Database(err))) => {
            assert_eq!(err.code().as_deref(), Some("23503"), "{err}")
        }
        other => panic!("expected a foreign key violation, got {other:?}"),
    }
    assert_eq!(env.count_state("queued").await, 0);

    ledger.insert(acme.id, &[noop()], "test").await.unwrap();
    let moved = sqlx::query("UPDATE jobs SET tenant_id = $1")
        .bind(globex.id)
        .execute(&env.pool)
        .await;
    assert_eq!(sqlstate(moved), "23001", "a job's tenant never changes");
    let deleted = sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(acme.id)
        .execute(&env.pool)
        .await;
    assert_eq!(sqlstate(deleted), "23503", "a tenant with jobs stays");
    let truncated = sqlx::query("TRUNCATE tenants CASCADE")
        .execute(&env.pool)
        .await;
    assert_eq!(sqlstate(truncated), "23503", "tenants with jobs stay");
    // A tenant without jobs can go.
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(globex.id)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(env.count_state("queued").await, 1);
    env.finish().await;
}
