//! The lancedb store on a real directory: upserts by task id, cosine search, deletes across a
//! tenant's spaces, spaces kept apart, and two writers on one table at once.

use taskfleet_agents::{Space, VectorStore, normalised};
use uuid::Uuid;

fn space(embedder: &str, dimensions: usize) -> Space {
    Space {
        embedder: embedder.into(),
        dimensions,
    }
}

/// A unit vector pointing mostly along `axis`.
fn along(axis: usize, dimensions: usize, tilt: f32) -> Vec<f32> {
    let mut v = vec![tilt; dimensions];
    v[axis] = 1.0;
    normalised(v)
}

async fn store() -> (VectorStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tf-lancedb-{}", Uuid::new_v4().simple()));
    let store = VectorStore::open(dir.to_str().unwrap()).await.unwrap();
    (store, dir)
}

#[tokio::test]
async fn upserts_replace_by_task_and_search_ranks_by_cosine() {
    let (store, dir) = store().await;
    let (tenant, s) = (Uuid::now_v7(), space("test:a", 8));
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store
        .upsert(
            tenant,
            &s,
            &[
                (a, along(0, 8, 0.0)),
                (b, along(1, 8, 0.0)),
                (c, along(0, 8, 0.3)),
            ],
        )
        .await
        .unwrap();
    let found = store
        .nearest(tenant, &s, &along(0, 8, 0.0), 3)
        .await
        .unwrap();
    assert_eq!(found[0].task_id, a);
    assert!((found[0].similarity - 1.0).abs() < 1e-5, "{found:?}");
    assert_eq!(found[1].task_id, c);
    assert_eq!(found[2].task_id, b);
    assert!(found[2].similarity.abs() < 1e-5, "{found:?}");

    // The same task again replaces its row.
    store
        .upsert(tenant, &s, &[(b, along(0, 8, 0.01))])
        .await
        .unwrap();
    assert_eq!(store.count(tenant, &s).await.unwrap(), 3);
    let found = store
        .nearest(tenant, &s, &along(1, 8, 0.0), 1)
        .await
        .unwrap();
    assert_ne!(found[0].task_id, b, "{found:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn spaces_and_tenants_never_meet_and_deletes_reach_every_space() {
    let (store, dir) = store().await;
    let (tenant, other) = (Uuid::now_v7(), Uuid::now_v7());
    let (small, large) = (space("local:x", 4), space("openai:y", 6));
    let task = Uuid::now_v7();
    store
        .upsert(tenant, &small, &[(task, along(0, 4, 0.0))])
        .await
        .unwrap();
    store
        .upsert(tenant, &large, &[(task, along(0, 6, 0.0))])
        .await
        .unwrap();
    store
        .upsert(other, &small, &[(Uuid::now_v7(), along(0, 4, 0.0))])
        .await
        .unwrap();
    assert!(
        store
            .nearest(tenant, &space("local:z", 4), &along(0, 4, 0.0), 5)
            .await
            .unwrap()
            .is_empty()
    );
    let mine = store
        .nearest(tenant, &small, &along(0, 4, 0.0), 5)
        .await
        .unwrap();
    assert_eq!(mine.iter().map(|n| n.task_id).collect::<Vec<_>>(), [task]);

    store.delete(tenant, &[task]).await.unwrap();
    assert_eq!(store.count(tenant, &small).await.unwrap(), 0);
    assert_eq!(store.count(tenant, &large).await.unwrap(), 0);
    assert_eq!(store.count(other, &small).await.unwrap(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn two_writers_on_one_table_both_land() {
    let (store, dir) = store().await;
    // A second connection, as a second worker process would have.
    let second = VectorStore::open(dir.to_str().unwrap()).await.unwrap();
    let (tenant, s) = (Uuid::now_v7(), space("test:a", 8));
    let rows = |n: usize| -> Vec<(Uuid, Vec<f32>)> {
        (0..n)
            .map(|i| (Uuid::now_v7(), along(i % 8, 8, 0.1)))
            .collect()
    };
    let writes = (0..6).map(|round| {
        let (store, second, s) = (store.clone(), second.clone(), s.clone());
        let batch = rows(20);
        tokio::spawn(async move {
            let writer = if round % 2 == 0 { store } else { second };
            writer.upsert(tenant, &s, &batch).await
        })
    });
    for write in futures::future::join_all(writes).await {
        write.unwrap().unwrap();
    }
    assert_eq!(store.count(tenant, &s).await.unwrap(), 120);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_says_why() {
    let file = std::env::temp_dir().join(format!("tf-not-a-dir-{}", Uuid::new_v4().simple()));
    std::fs::write(&file, b"x").unwrap();
    let err = VectorStore::open(file.to_str().unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("cannot create"), "{err}");
    std::fs::remove_file(file).unwrap();
}
