//! The embed and agent queues' figures: the local model's throughput, vector search at a
//! tenant's scale, the formula ranking a large task list (read, rank, store), and a worker's
//! memory once it has loaded the model and embedded.

use std::time::Duration;

use anyhow::{Context, ensure};
use chrono::Utc;
use taskfleet_agents::{
    Candidate, Embedder, LocalModel, Space, VectorStore, Weights, formula, normalised,
};
use taskfleet_storage::Tasks;
use taskfleet_tests::{TestEnv, embed_model_dir, json, wait_until};
use tokio::time::Instant;
use uuid::Uuid;

use crate::stats::{Latency, peak_rss_mib, rate};

#[derive(Debug, Clone)]
pub struct AgentSizes {
    /// Texts embedded, in batches of [`EMBED_BATCH`].
    pub embed_texts: usize,
    /// Vectors in the searched table, and searches timed.
    pub vectors: usize,
    pub searches: usize,
    /// Open tasks the formula ranks.
    pub tasks: usize,
    /// Tasks a worker embeds before its memory is read.
    pub rss_tasks: usize,
}

const EMBED_BATCH: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct AgentFigures {
    pub embed_per_second: f64,
    pub search: Latency,
    pub prioritise: Duration,
    pub worker_peak_rss_mib: f64,
}

pub async fn measure(sizes: &AgentSizes) -> anyhow::Result<AgentFigures> {
    eprintln!("local model throughput ({} texts)…", sizes.embed_texts);
    let embed_per_second = crate::announce(embed_throughput(sizes.embed_texts).await?);
    eprintln!("vector search ({} vectors)…", sizes.vectors);
    let search = crate::announce(search(sizes.vectors, sizes.searches).await?);
    eprintln!("prioritise ({} tasks)…", sizes.tasks);
    let prioritise = crate::announce(prioritise(sizes.tasks).await?);
    eprintln!(
        "worker memory with the model ({} tasks embedded)…",
        sizes.rss_tasks
    );
    let worker_peak_rss_mib = crate::announce(worker_rss(sizes.rss_tasks).await?);
    Ok(AgentFigures {
        embed_per_second,
        search,
        prioritise,
        worker_peak_rss_mib,
    })
}

/// A task's text as ingests make them: a title and a snippet of a sentence or two.
fn task_text(n: usize) -> String {
    const SUBJECTS: [&str; 8] = [
        "checkout",
        "invoice PDF",
        "login page",
        "nightly export",
        "TLS certificate",
        "on-call rotation",
        "capacity plan",
        "search index",
    ];
    const PROBLEMS: [&str; 6] = [
        "fails with a 500 for some customers",
        "renders the wrong currency",
        "times out after the last deploy",
        "needs a review before Friday",
        "expires at the end of the week",
        "is missing from the dashboard",
    ];
    let subject = SUBJECTS[n % SUBJECTS.len()];
    let problem = PROBLEMS[(n / SUBJECTS.len()) % PROBLEMS.len()];
    format!(
        "Ticket {n}: the {subject} {problem}\nReported by support on day {}: the {subject} {problem}; \
         customers noticed it first and the team needs to look at logs, write a fix and add a test.",
        n % 30
    )
}

async fn embed_throughput(texts: usize) -> anyhow::Result<f64> {
    let dir = embed_model_dir();
    let model = Embedder::Local(
        LocalModel::load(&dir).with_context(|| format!("the model in {}", dir.display()))?,
    );
    let texts: Vec<String> = (0..texts.max(EMBED_BATCH)).map(task_text).collect();
    // One batch first: the first pass pays for allocations that later ones reuse.
    model.embed(&texts[..EMBED_BATCH]).await?;
    let started = Instant::now();
    for batch in texts.chunks(EMBED_BATCH) {
        let embedded = model.embed(batch).await?;
        ensure!(embedded.vectors.len() == batch.len());
    }
    Ok(rate(texts.len(), started.elapsed()))
}

/// A pseudo-random unit vector (xorshift): the store cannot tell it from a model's.
fn random_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2_000) as f32 / 1_000.0 - 1.0
        })
        .collect();
    normalised(v)
}

async fn search(vectors: usize, searches: usize) -> anyhow::Result<Latency> {
    let dir = std::env::temp_dir().join(format!("tf-bench-lancedb-{}", Uuid::new_v4().simple()));
    let store = VectorStore::open(dir.to_str().unwrap()).await?;
    let (tenant, space) = (
        Uuid::now_v7(),
        Space {
            embedder: LocalModel::ID.into(),
            dimensions: 384,
        },
    );
    for chunk in (0..vectors).collect::<Vec<_>>().chunks(10_000) {
        let rows: Vec<(Uuid, Vec<f32>)> = chunk
            .iter()
            .map(|&i| (Uuid::now_v7(), random_vector(i as u64, 384)))
            .collect();
        store.upsert(tenant, &space, &rows).await?;
    }
    ensure!(store.count(tenant, &space).await? == vectors);
    let mut millis = Vec::with_capacity(searches);
    for i in 0..searches {
        let query = random_vector(1_000_000 + i as u64, 384);
        let started = Instant::now();
        let found = store.nearest(tenant, &space, &query, 6).await?;
        millis.push(started.elapsed().as_secs_f64() * 1e3);
        ensure!(found.len() == 6.min(vectors));
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(Latency::of(millis))
}

/// Reading the open tasks, ranking them and storing every placement: the whole handler.
async fn prioritise(tasks: usize) -> anyhow::Result<Duration> {
    let env = TestEnv::new().await;
    let tenant: Uuid =
        sqlx::query_scalar("INSERT INTO tenants (id, name) VALUES ($1, 'bench') RETURNING id")
            .bind(Uuid::now_v7())
            .fetch_one(&env.pool)
            .await?;
    sqlx::query(
        "INSERT INTO tasks (id, tenant_id, source_kind, source_ref, title, snippet, due_at, labels,
                            status, horizon, source_updated_at, content_hash)
         SELECT gen_random_uuid(), $1, (ARRAY['github','jira','gmail','gdrive'])[1 + n % 4],
                n::text, 'Task ' || n, 'What needs doing about task ' || n,
                CASE WHEN n % 3 = 0 THEN now() + (n % 40 - 5) * interval '1 day' END,
                CASE n % 4 WHEN 0 THEN ARRAY['bug'] WHEN 1 THEN ARRAY['High']
                           WHEN 2 THEN ARRAY['docs'] ELSE ARRAY[]::text[] END,
                'open', 'month', now() - (n % 20) * interval '1 day',
                sha256(convert_to(n::text, 'UTF8'))
         FROM generate_series(1, $2) AS n",
    )
    .bind(tenant)
    .bind(tasks as i64)
    .execute(&env.pool)
    .await?;
    let store = Tasks::new(env.pool.clone());
    let started = Instant::now();
    let (zone, rows) = store.rank_candidates(tenant).await?;
    let candidates: Vec<Candidate> = rows
        .into_iter()
        .map(|row| Candidate {
            id: row.id,
            source_kind: row.source_kind,
            title: row.title,
            labels: row.labels,
            due_at: row.due_at,
            updated_at: row.updated_at,
        })
        .collect();
    let ranked = formula::rank(
        &candidates,
        Utc::now(),
        zone.parse().unwrap_or(chrono_tz::UTC),
        Weights::default(),
    );
    let placements: Vec<_> = ranked
        .iter()
        .map(|r| taskfleet_worker::handlers::prioritise::placement(r, "formula"))
        .collect();
    let stored = store.store_ranking(tenant, &placements).await?;
    let took = started.elapsed();
    ensure!(
        stored as usize == tasks,
        "{stored} of {tasks} placements stored"
    );
    env.finish().await;
    Ok(took)
}

/// A worker serving the embed and agent queues, after it loaded the model and embedded
/// `tasks` tasks typed in through the API.
async fn worker_rss(tasks: usize) -> anyhow::Result<f64> {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("bench");
    let worker = env.start_worker(&["--queues", "embed,agent"]);
    for n in 0..tasks {
        let text = task_text(n);
        let (title, description) = text.split_once('\n').unwrap();
        let (status, body) = api
            .post(
                &key,
                "/v1/tasks",
                &json!({"title": title, "description": description}),
            )
            .await;
        ensure!(status == 201, "{body}");
    }
    let pool = env.pool.clone();
    wait_until(Duration::from_secs(600), "every task embedded", || {
        let pool = pool.clone();
        async move {
            let left: i64 =
                sqlx::query_scalar("SELECT count(*) FROM tasks WHERE embedded_with IS NULL")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            left == 0
        }
    })
    .await;
    let rss = peak_rss_mib(env.pid(worker)).context("the worker's memory")?;
    env.finish().await;
    Ok(rss)
}
