//! Statistics against a long history: a `/metrics` scrape and `GET /v1/queues` timed on an
//! empty ledger, then again once it holds many finished jobs, which they must not read
//! (ADR 0013). The jobs are written straight into the bench's own database, set-based,
//! finished between the statistics' window and the default retention of a succeeded job.

use std::time::Duration;

use anyhow::ensure;
use taskfleet_jobs::Queue;
use taskfleet_storage::Tenants;
use taskfleet_tests::{Api, TestEnv};
use tokio::time::Instant;

use crate::stats::Latency;

/// How long the API reuses the gauges it read from the ledger (`LEDGER_GAUGES_REUSE` in
/// `api/src/app.rs`): a scrape sooner than this after the last one reads nothing.
const GAUGES_REUSE: Duration = Duration::from_secs(5);

/// Rows per fill statement.
const FILL_CHUNK: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct HistorySizes {
    pub finished_jobs: usize,
    pub scrapes: usize,
    pub queue_reads: usize,
}

/// The two reads, timed.
#[derive(Debug, Clone, Copy)]
pub struct Reads {
    pub scrape: Latency,
    pub queues: Latency,
}

#[derive(Debug, Clone, Copy)]
pub struct HistoryFigures {
    pub empty: Reads,
    pub full: Reads,
}

pub async fn measure(sizes: &HistorySizes) -> anyhow::Result<HistoryFigures> {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let operator = env.create_operator_key("ops");
    let mut last_scrape = None;
    let empty = reads(&api, &operator, sizes, &mut last_scrape).await?;
    eprintln!("  empty ledger: {empty:?}");

    let tenant = Tenants::new(env.pool.clone()).ensure("bench").await?;
    let queues: Vec<&str> = Queue::ALL.iter().map(|q| q.as_str()).collect();
    let began = Instant::now();
    for from in (0..sizes.finished_jobs).step_by(FILL_CHUNK) {
        let to = (from + FILL_CHUNK).min(sizes.finished_jobs);
        // Finished from 16 minutes to a little under a day ago: out of the statistics'
        // 15-minute window, within the default retention of a succeeded job.
        sqlx::query(
            "INSERT INTO jobs (id, tenant_id, queue, kind, payload, state, attempt,
                               max_attempts, run_at, created_at, started_at, finished_at)
             SELECT gen_random_uuid(), $1, ($2::text[])[1 + i % cardinality($2::text[])],
                    'executor.run', '{\"kind\": \"executor.run\", \"tool\": \"noop\"}',
                    (ARRAY['succeeded', 'succeeded', 'succeeded', 'dead', 'cancelled'])[1 + i % 5],
                    1, 1, at, at, at, at
             FROM generate_series($3::bigint, $4::bigint - 1) AS i,
                  LATERAL (SELECT now() - make_interval(mins => 16, secs => i % 82000) AS at) AS t",
        )
        .bind(tenant.id)
        .bind(&queues)
        .bind(from as i64)
        .bind(to as i64)
        .execute(&env.pool)
        .await?;
        eprintln!("  {to} finished jobs written");
    }
    // What autovacuum would have done by the time a ledger grew this long.
    sqlx::query("VACUUM ANALYZE jobs")
        .execute(&env.pool)
        .await?;
    eprintln!(
        "  written and vacuumed in {:.0} s",
        began.elapsed().as_secs_f64()
    );
    let finished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL")
            .fetch_one(&env.pool)
            .await?;
    ensure!(
        finished as usize == sizes.finished_jobs,
        "the ledger holds every finished job"
    );

    let full = reads(&api, &operator, sizes, &mut last_scrape).await?;
    env.finish().await;
    Ok(HistoryFigures { empty, full })
}

/// Times `queue_reads` reads of `/v1/queues`, then `scrapes` scrapes of `/metrics`, each
/// after the API's gauges have aged out so that it reads the ledger. One untimed read of
/// each goes first: the first statements after the fill are planned anew.
async fn reads(
    api: &Api,
    key: &str,
    sizes: &HistorySizes,
    last_scrape: &mut Option<Instant>,
) -> anyhow::Result<Reads> {
    let timed = |path: &'static str, key: Option<&str>| {
        let mut request = api.http.get(api.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move {
            let began = Instant::now();
            let resp = request.send().await?;
            ensure!(resp.status() == 200, "{path} answered {}", resp.status());
            resp.bytes().await?;
            Ok(began.elapsed().as_secs_f64() * 1e3)
        }
    };
    let mut scrape = async || {
        if let Some(at) = *last_scrape {
            tokio::time::sleep_until(at + GAUGES_REUSE + Duration::from_millis(100)).await;
        }
        *last_scrape = Some(Instant::now());
        timed("/metrics", None).await
    };
    scrape().await?;
    timed("/v1/queues", Some(key)).await?;
    let mut queues = Vec::with_capacity(sizes.queue_reads);
    for _ in 0..sizes.queue_reads {
        queues.push(timed("/v1/queues", Some(key)).await?);
    }
    let mut scrapes = Vec::with_capacity(sizes.scrapes);
    for _ in 0..sizes.scrapes {
        scrapes.push(scrape().await?);
    }
    Ok(Reads {
        scrape: Latency::of(scrapes),
        queues: Latency::of(queues),
    })
}
