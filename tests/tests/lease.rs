//! The Redis lease behind leader election: one holder, epochs that only grow, expiry.

use std::time::Duration;

use taskfleet_storage::Lease;
use taskfleet_tests::TestEnv;

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
