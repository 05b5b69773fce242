//! Redis leases: one holder, epochs that only grow, expiry, and a holder taking back what
//! Redis lost.

use std::time::Duration;

use taskfleet_storage::{Lease, Renewal};
use taskfleet_tests::{TestEnv, wait_until};

#[tokio::test]
async fn one_holder_at_a_time_with_growing_epochs() {
    let env = TestEnv::new().await;
    let key = format!("{}:lease:test", env.redis_prefix);
    let ttl = Duration::from_millis(300);
    let a = Lease::new(key.clone(), "a".into(), ttl);
    let b = Lease::new(key.clone(), "b".into(), ttl);
    let mut conn = env.redis.clone();

    let first = a
        .acquire(&mut conn)
        .await
        .unwrap()
        .expect("a takes the free lease");
    assert_eq!(b.acquire(&mut conn).await.unwrap(), None, "b must wait");
    assert_eq!(
        a.acquire(&mut conn).await.unwrap(),
        Some(first),
        "renewal keeps the epoch"
    );

    a.release(&mut conn, first).await.unwrap();
    let second = b
        .acquire(&mut conn)
        .await
        .unwrap()
        .expect("released lease is free");
    assert!(second > first);

    // b stops renewing: after the ttl a takes over with a newer epoch.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let third = a
        .acquire(&mut conn)
        .await
        .unwrap()
        .expect("expired lease is free");
    assert!(third > second);
    // b's stale release does not remove a's lease.
    b.release(&mut conn, second).await.unwrap();
    assert_eq!(b.acquire(&mut conn).await.unwrap(), None);
    env.finish().await;
}

#[tokio::test]
async fn a_late_take_under_an_older_epoch_leaves_the_newer_holder_alone() {
    let env = TestEnv::new().await;
    let key = format!("{}:lease:job", env.redis_prefix);
    let ttl = Duration::from_secs(30);
    let paused = Lease::new(key.clone(), "paused-worker".into(), ttl);
    let current = Lease::new(key.clone(), "current-worker".into(), ttl);
    let mut conn = env.redis.clone();

    // The job was started again under epoch 6; the worker of epoch 5 wakes up and takes its
    // lease late.
    let taken = Lease::hold_all(&mut conn, &[(current.clone(), 6)])
        .await
        .unwrap();
    assert_eq!(taken, [true]);
    let taken = Lease::hold_all(&mut conn, &[(paused.clone(), 5)])
        .await
        .unwrap();
    assert_eq!(taken, [false], "an older epoch must not take a newer lease");
    assert_eq!(
        Lease::holder(&mut conn, &key).await.unwrap().as_deref(),
        Some("current-worker")
    );
    assert_eq!(
        Lease::epochs(&mut conn, std::slice::from_ref(&key))
            .await
            .unwrap(),
        [Some(6)]
    );

    // Taking it again under its own epoch, or under a newer one, works.
    assert_eq!(
        Lease::hold_all(&mut conn, &[(current.clone(), 6)])
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        Lease::hold_all(&mut conn, &[(paused, 7)]).await.unwrap(),
        [true]
    );
    assert_eq!(Lease::epochs(&mut conn, &[key]).await.unwrap(), [Some(7)]);
    env.finish().await;
}

/// A lease Redis lost (it restarted empty, or was flushed) reads as absent rather than as
/// another's, and its holder takes it back under its epoch; once a newer attempt holds it,
/// the old holder can do neither. A lease that lapsed while Redis kept its keys is not taken
/// back: the reclaimer may have given its job to another attempt.
#[tokio::test]
async fn a_lease_redis_lost_is_taken_back_by_its_holder() {
    let env = TestEnv::new().await;
    let keys = taskfleet_storage::redis::Keys::new(&env.redis_prefix);
    let job = uuid::Uuid::now_v7();
    let key = keys.job_lease(job);
    let flag = keys.cancel_flag(job);
    let born = keys.keyspace_born(job);
    let ttl = Duration::from_millis(400);
    let holder = Lease::new(key.clone(), "worker-a".into(), ttl);
    let mut conn = env.redis.clone();
    let held = Lease::hold_all(&mut conn, &[(holder.clone(), 5)]).await;
    assert_eq!(held.unwrap(), [true]);
    assert_eq!(
        holder.renew(&mut conn, 5, &flag).await.unwrap(),
        Renewal::Renewed
    );

    env.flush_redis().await;
    assert_eq!(
        holder.renew(&mut conn, 5, &flag).await.unwrap(),
        Renewal::Absent
    );
    assert!(holder.retake(&mut conn, 5, &born).await.unwrap());
    assert_eq!(
        holder.renew(&mut conn, 5, &flag).await.unwrap(),
        Renewal::Renewed
    );

    // The job was started again under epoch 6 elsewhere.
    let newer = Lease::new(key.clone(), "worker-b".into(), ttl);
    let held = Lease::hold_all(&mut conn, &[(newer, 6)]).await;
    assert_eq!(held.unwrap(), [true]);
    assert_eq!(
        holder.renew(&mut conn, 5, &flag).await.unwrap(),
        Renewal::Lost
    );
    assert!(!holder.retake(&mut conn, 5, &born).await.unwrap());

    // Redis keeps its keys for longer than a ttl; the newer lease lapses (its holder stalled).
    wait_until(Duration::from_secs(5), "the newer lease lapses", || async {
        Lease::epochs(&mut env.redis.clone(), std::slice::from_ref(&key))
            .await
            .unwrap()
            == [None]
    })
    .await;
    assert!(keyspace_age(&mut conn, &born).await >= ttl);
    assert!(!holder.retake(&mut conn, 5, &born).await.unwrap());
    env.finish().await;
}

/// The keyspace's age, by Redis's clock, counts from the first call after Redis started
/// empty: a flush starts it again.
#[tokio::test]
async fn the_keyspace_age_starts_again_when_redis_is_emptied() {
    let env = TestEnv::new().await;
    let key =
        taskfleet_storage::redis::Keys::new(&env.redis_prefix).keyspace_born(uuid::Uuid::now_v7());
    let mut conn = env.redis.clone();
    let young = Duration::from_millis(100);
    assert!(keyspace_age(&mut conn, &key).await < young);
    // Time has to pass for an age to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let aged = keyspace_age(&mut conn, &key).await;
    assert!(aged >= Duration::from_millis(250), "{aged:?}");

    env.flush_redis().await;
    assert!(keyspace_age(&mut conn, &key).await < young);
    env.finish().await;
}

/// The leader's reclaimer sets every job shard's keyspace birth when it starts, before any
/// lease is found absent: a birth set only at a shard's first absent lease would be young
/// then, and excuse that lapse for one ttl more.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_marks_every_shards_keyspace_birth_when_it_starts() {
    let mut env = TestEnv::new().await;
    let births = taskfleet_storage::redis::Keys::new(&env.redis_prefix).keyspace_births();
    assert_eq!(births.len(), 64);
    env.start_worker(taskfleet_tests::FAST_FAILOVER);
    let conn = env.redis.clone();
    wait_until(Duration::from_secs(30), "every birth is set", || {
        let (mut conn, births) = (conn.clone(), births.clone());
        async move {
            let set: Vec<Option<i64>> = redis::cmd("MGET")
                .arg(&births)
                .query_async(&mut conn)
                .await
                .unwrap();
            set.iter().all(Option::is_some)
        }
    })
    .await;
    // No job ran: nothing but the start set them.
    let ran: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(ran, 0);
    env.finish().await;
}

async fn keyspace_age(conn: &mut taskfleet_storage::redis::Connection, key: &str) -> Duration {
    let ages = Lease::keyspace_ages(conn, &[key.to_owned()]).await.unwrap();
    ages[0]
}
