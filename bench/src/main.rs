//! `make bench`: measures taskfleet and its peers side by side on this machine and writes
//! the figures to `docs/BENCHMARKS.md`. Each target of issue 26 is stated as a ratio to the
//! peer measured in the same invocation (or as an absolute figure where it has no peer), from
//! medians of `--runs` runs (3), and the report says of each whether it is met. The fleet runs
//! with the worker's shipped defaults. `--smoke` runs every taskfleet measure (and raw
//! apalis-redis) once with small sizes and no Celery or BullMQ, to keep the program working;
//! `make test` runs it.

mod agents;
mod history;
mod ours;
mod peers;
mod stats;

use std::{fmt::Write as _, path::PathBuf};

use clap::{Parser, ValueEnum};
use ours::Sizes;
use peers::Peer;
use stats::Latency;

#[derive(Debug, Parser)]
#[command(
    name = "taskfleet-bench",
    about = "Benchmarks taskfleet against Celery, BullMQ and raw apalis-redis"
)]
struct Args {
    /// Small sizes, taskfleet and raw apalis-redis only: checks the program, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Skip Celery and BullMQ (they are installed from PyPI and npm on first use).
    #[arg(long)]
    no_peers: bool,
    /// Run only these measures (comma-separated), e.g. `--only burn-down,apalis`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Measure>,
    /// Write the report here (Markdown).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Jobs in the burn-down instead of its size's default (20,000; 500 for `--smoke`): a
    /// longer run to profile. Peers drain as many.
    #[arg(long)]
    burn_down_jobs: Option<usize>,
    /// How many times each system's burn-down, our pickup and API measures and the BullMQ
    /// script run instead of the size's default (3; 1 for `--smoke`): the report gives the
    /// medians and their ranges.
    #[arg(long, alias = "burn-down-runs")]
    runs: Option<usize>,
    /// Finished jobs in the ledger for the statistics measure instead of its size's default
    /// (10,000,000; 5,000 for `--smoke`).
    #[arg(long)]
    finished_jobs: Option<usize>,
    /// Jobs set for tomorrow beside the future-jobs burn-down instead of its size's default
    /// (1,000,000; 20,000 for `--smoke`).
    #[arg(long)]
    future_jobs: Option<usize>,
    /// Where the peers' virtualenv and node_modules live.
    #[arg(long, default_value = "var/bench")]
    work_dir: PathBuf,
    #[arg(
        long,
        env = "TASKFLEET_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Measure {
    BurnDown,
    Pickup,
    Api,
    Sse,
    Apalis,
    Bullmq,
    Celery,
    /// The embed and agent queues: model throughput, vector search, prioritisation.
    Agents,
    /// `/metrics` and `GET /v1/queues` on an empty ledger and on one full of finished jobs.
    History,
    /// The burn-down beside jobs scheduled for tomorrow.
    FutureJobs,
    /// The burn-down with 1, 2 and 4 worker processes: where the ledger saturates.
    Scaling,
}

/// What was measured; `None` where a measure did not run.
struct Report {
    sizes: Sizes,
    burn_down: Option<Median<ours::BurnDown>>,
    /// Our pickup runs; the one with the median p99 counts.
    pickup: Option<Median<ours::Pickup>>,
    /// `POST /v1/jobs` and `POST /v1/jobs/batch` rates, each the median of its runs.
    api_single: Option<Median<f64>>,
    api_batch: Option<Median<f64>>,
    sse: Option<Latency>,
    apalis: Option<Median<Peer>>,
    celery: Option<Median<Peer>>,
    /// BullMQ's runs by drain rate; its pickup and `addBulk` medians are taken over the same
    /// runs, each on its own.
    bullmq: Option<Median<Peer>>,
    bullmq_pickup: Option<Median<Latency>>,
    bullmq_add_bulk: Option<Median<f64>>,
    agents: Option<agents::AgentFigures>,
    history_sizes: history::HistorySizes,
    history: Option<history::HistoryFigures>,
    /// Jobs set for tomorrow beside the burn-down of [`Report::beside_future`].
    future_jobs: usize,
    beside_future: Option<Median<ours::BurnDown>>,
    /// The burn-down by how many worker processes ran it.
    scaling: Vec<(usize, Median<ours::BurnDown>)>,
}

/// A measure run several times: one drain lasts a second or two, and on a shared two-core
/// machine successive drains of the same build differ (by 3% for us and 12% for BullMQ in
/// one run of the bench; by a tenth for us between invocations).
#[derive(Debug, Clone, Copy)]
struct Median<T> {
    /// The run whose figure (a rate, a p99) is the median; its other figures (RSS, pickup by
    /// stage) come along.
    run: T,
    /// That figure, and its least and greatest over the runs.
    value: f64,
    least: f64,
    most: f64,
}

impl<T> Median<T> {
    /// The median, and the range when there was more than one run.
    fn shown(&self, unit: &str) -> String {
        if self.least == self.most {
            format!("{:.0}{unit}", self.value)
        } else {
            format!(
                "{:.0}{unit} ({:.0}–{:.0})",
                self.value, self.least, self.most
            )
        }
    }
}

/// The run whose `figure` is the median (of an even number, the greater of the two middle
/// ones); `None` without runs.
fn median_by<T>(mut all: Vec<T>, figure: impl Fn(&T) -> f64) -> Option<Median<T>> {
    all.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
    let (least, most) = (figure(all.first()?), figure(all.last()?));
    let run = all.swap_remove(all.len() / 2);
    Some(Median {
        value: figure(&run),
        run,
        least,
        most,
    })
}

/// Runs a measure `runs` times (at least once), showing each result as it comes.
async fn repeated<T: std::fmt::Debug, Fut>(
    runs: usize,
    mut run: impl FnMut() -> Fut,
) -> anyhow::Result<Vec<T>>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut all = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        all.push(announce(run().await?));
    }
    Ok(all)
}

/// Runs a measure `runs` times (at least once) and keeps the run whose `figure` is the median.
async fn median_of<T: std::fmt::Debug, Fut>(
    runs: usize,
    figure: impl Fn(&T) -> f64,
    run: impl FnMut() -> Fut,
) -> anyhow::Result<Median<T>>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let all = repeated(runs, run).await?;
    Ok(median_by(all, figure).expect("a measure runs at least once"))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu})")
}

/// A target of issue 26: `what`, the figure measured (a ratio to the peer of the same run, or
/// an absolute figure), the target, and whether it is met.
fn verdict(
    what: &str,
    figure: Option<f64>,
    shown: impl Fn(f64) -> String,
    target: &str,
    met: impl Fn(f64) -> bool,
) -> String {
    match figure {
        Some(figure) => format!(
            "{what} {} (target {target}: {})",
            shown(figure),
            if met(figure) { "met" } else { "not met" }
        ),
        None => format!("{what} — (target {target}: not measured)"),
    }
}

/// `figure` formatted, or a dash where it was not measured.
fn shown<T>(figure: Option<T>, format: impl Fn(T) -> String) -> String {
    figure.map_or("—".to_owned(), format)
}

fn latency(l: Latency) -> String {
    format!("{:.1} / {:.1} / {:.1} ms", l.p50, l.p99, l.max)
}

/// The latencies of the run with the median p99, with the range of p99 over the runs when
/// there was more than one.
fn latency_median<T>(m: Median<T>, of: impl Fn(&T) -> Latency) -> String {
    let shown = latency(of(&m.run));
    if m.least == m.most {
        shown
    } else {
        format!("{shown} (p99 {:.1}–{:.1})", m.least, m.most)
    }
}

/// How the worker's concurrency was set: its shipped defaults unless the bench's own
/// environment (which the workers inherit) overrides them.
fn concurrency_source() -> String {
    match std::env::var("TASKFLEET_CONCURRENCY") {
        Ok(set) => format!("`TASKFLEET_CONCURRENCY={set}` from the environment, not the defaults"),
        Err(_) => "the worker's shipped defaults".to_owned(),
    }
}

impl Report {
    fn markdown(&self) -> String {
        let s = &self.sizes;
        let mut out = String::new();
        let build = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        let _ = writeln!(
            out,
            "Measured by `make bench` on {}, {}, {build} build, Redis and Postgres on loopback.\n",
            chrono::Utc::now().format("%Y-%m-%d"),
            machine()
        );
        let _ = writeln!(
            out,
            "| measure | taskfleet | raw apalis-redis | BullMQ | Celery | target |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        let of_runs = |what: &str| match s.runs {
            1 => String::new(),
            runs => format!("; {what} of {runs} runs"),
        };
        let drain_rate = |peer: &Option<Median<Peer>>| shown(*peer, |p| p.shown("/s"));
        let ours_rate = self.burn_down.map(|b| b.value);
        // The same in every run, and in the burn-down beside future jobs.
        let executors = shown(self.burn_down.or(self.beside_future), |b| {
            b.run.executors.to_string()
        });
        let _ = writeln!(
            out,
            "| burn-down, {} no-op jobs (full ledger lifecycle); taskfleet: {} workers, {} executors in all on the `executor` queue ({}); BullMQ: concurrency {}; raw apalis-redis: {}{} | {} | {} | {} | {} | ≥ 1.0× BullMQ, ≥ 10× Celery |",
            s.burn_down_jobs,
            s.workers,
            executors,
            concurrency_source(),
            peers::BULLMQ_CONCURRENCY,
            s.apalis_concurrency,
            of_runs("median (range)"),
            shown(self.burn_down, |b| b.shown("/s")),
            drain_rate(&self.apalis),
            drain_rate(&self.bullmq),
            drain_rate(&self.celery)
        );
        let _ = writeln!(
            out,
            "| burn-down beside {} jobs set for tomorrow | {} | | | | within 10% of the burn-down ({}) |",
            self.future_jobs,
            shown(self.beside_future, |b| b.shown("/s")),
            shown(
                self.beside_future.map(|b| b.value).zip(ours_rate),
                |(beside, alone)| format!("{:+.0}%", (beside / alone - 1.0) * 100.0)
            )
        );
        let _ = writeln!(
            out,
            "| pickup latency p50 / p99 / max, {} jobs at {}/s{} | {} | — | {} | — | p99 ≤ 1.5× BullMQ's p99; p50 ≤ 2 ms |",
            s.pickup_jobs,
            s.pickup_per_second,
            of_runs("the run with the median p99 (range of p99)"),
            shown(self.pickup, |p| latency_median(p, |p| p.total)),
            shown(self.bullmq_pickup, |p| latency_median(p, |l| *l))
        );
        let _ = writeln!(
            out,
            "| pickup by stage, p50 / p99: request → ledger row, row → pushed to Redis, pushed → started | {} | | | | |",
            shown(self.pickup, |p| {
                let p = p.run;
                let pair = |l: Latency| format!("{:.1} / {:.1}", l.p50, l.p99);
                format!(
                    "{}, {}, {} ms",
                    pair(p.accepted),
                    pair(p.dispatched),
                    pair(p.started)
                )
            })
        );
        let _ = writeln!(
            out,
            "| API, single `POST /v1/jobs`, 64 connections{} | {} | | | | ≥ 5,000/s |",
            of_runs("median (range)"),
            shown(self.api_single, |m| m.shown("/s"))
        );
        let _ = writeln!(
            out,
            "| API, `POST /v1/jobs/batch` of 1,000, 8 connections (BullMQ: `addBulk` of 1,000, 8 calls in flight){} | {} | | {} | | ≥ 2× BullMQ's `addBulk` |",
            of_runs("median (range)"),
            shown(self.api_batch, |m| m.shown(" jobs/s")),
            shown(self.bullmq_add_bulk, |m| m.shown(" jobs/s"))
        );
        let _ = writeln!(
            out,
            "| SSE delivery p50 / p99, {} subscribers, {} jobs | {} | | | | |",
            s.sse_subscribers,
            s.sse_jobs,
            shown(self.sse, |l| format!(
                "{:.1} / {:.1} ms ({} deliveries)",
                l.p50, l.p99, l.samples
            ))
        );
        let _ = writeln!(
            out,
            "| peak RSS during burn-down: worker / API | {} | | | | worker ≤ 64 MiB |",
            shown(self.burn_down, |b| format!(
                "{:.1} / {:.1} MiB",
                b.run.worker_peak_rss_mib, b.run.api_peak_rss_mib
            ))
        );
        let a = &s.agents;
        let _ = writeln!(
            out,
            "| local model (all-MiniLM-L6-v2) embedding, {} texts in batches of 64 | {} | | | | ≥ 150/s |",
            a.embed_texts,
            shown(self.agents.map(|f| f.embed_per_second), |r| format!(
                "{r:.0} texts/s"
            ))
        );
        let _ = writeln!(
            out,
            "| vector search, 6 nearest by cosine among {} vectors of one tenant, p50 / p99 | {} | | | | p99 ≤ 50 ms |",
            a.vectors,
            shown(self.agents.map(|f| f.search), |l| format!(
                "{:.1} / {:.1} ms",
                l.p50, l.p99
            ))
        );
        let _ = writeln!(
            out,
            "| prioritise {} open tasks (read, formula, store) | {} | | | | < 2 s |",
            a.tasks,
            shown(self.agents.map(|f| f.prioritise), |d| format!(
                "{:.2} s",
                d.as_secs_f64()
            ))
        );
        let _ = writeln!(
            out,
            "| peak RSS of a worker with the model loaded, after embedding {} tasks | {} | | | | ≤ 300 MiB |",
            a.rss_tasks,
            shown(self.agents.map(|f| f.worker_peak_rss_mib), |m| format!(
                "{m:.0} MiB"
            ))
        );
        let _ = writeln!(
            out,
            "| `/metrics` scrape / `GET /v1/queues` p50: empty ledger → {} finished jobs | {} | | | | full ≈ empty |",
            self.history_sizes.finished_jobs,
            shown(self.history, |h| format!(
                "{:.1} → {:.1} / {:.1} → {:.1} ms",
                h.empty.scrape.p50, h.full.scrape.p50, h.empty.queues.p50, h.full.queues.p50
            ))
        );
        if let Some((_, one)) = self.scaling.first() {
            let curve: Vec<String> = self
                .scaling
                .iter()
                .map(|(workers, run)| {
                    format!(
                        "{workers}: {} (×{:.2})",
                        run.shown("/s"),
                        run.value / one.value
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "\nScaling: the burn-down of {} no-ops by worker processes (each with its default executors){}: {}.",
                s.burn_down_jobs,
                of_runs("median (range)"),
                curve.join("; ")
            );
        }
        let _ = writeln!(
            out,
            "\nRatios: taskfleet / the peer measured in this run (medians), or taskfleet's figure where the target has no peer.\n"
        );
        for line in self.targets() {
            let _ = writeln!(out, "- {line}");
        }
        out
    }

    /// Every target of issue 26, with its figure and whether it is met; raw apalis-redis,
    /// the floor of our own stack, is shown beside them without a target.
    fn targets(&self) -> Vec<String> {
        let times = |r: f64| format!("{r:.2}×");
        let over = |ours: Option<f64>, peer: Option<f64>| ours.zip(peer).map(|(o, p)| o / p);
        let drain = |peer: Option<Median<Peer>>| peer.map(|p| p.value);
        let ours_rate = self.burn_down.map(|b| b.value);
        vec![
            verdict(
                "burn-down vs BullMQ",
                over(ours_rate, drain(self.bullmq)),
                times,
                "≥ 1.0×",
                |r| r >= 1.0,
            ),
            verdict(
                "burn-down vs Celery",
                over(ours_rate, drain(self.celery)),
                times,
                "≥ 10×",
                |r| r >= 10.0,
            ),
            verdict(
                "pickup p99 vs BullMQ's p99",
                over(
                    self.pickup.map(|p| p.run.total.p99),
                    self.bullmq_pickup.map(|p| p.run.p99),
                ),
                times,
                "≤ 1.5×",
                |r| r <= 1.5,
            ),
            verdict(
                "pickup p50",
                self.pickup.map(|p| p.run.total.p50),
                |ms| format!("{ms:.2} ms"),
                "≤ 2 ms",
                |ms| ms <= 2.0,
            ),
            verdict(
                "batch enqueue (`POST /v1/jobs/batch`) vs BullMQ's `addBulk`",
                over(
                    self.api_batch.map(|m| m.value),
                    self.bullmq_add_bulk.map(|m| m.value),
                ),
                times,
                "≥ 2×",
                |r| r >= 2.0,
            ),
            verdict(
                "single enqueue (`POST /v1/jobs`)",
                self.api_single.map(|m| m.value),
                |r| format!("{r:.0}/s"),
                "≥ 5,000/s",
                |r| r >= 5_000.0,
            ),
            verdict(
                "worker peak RSS during burn-down",
                self.burn_down.map(|b| b.run.worker_peak_rss_mib),
                |mib| format!("{mib:.1} MiB"),
                "≤ 64 MiB",
                |mib| mib <= 64.0,
            ),
            format!(
                "burn-down vs raw apalis-redis {} (no target)",
                shown(over(ours_rate, drain(self.apalis)), times)
            ),
        ]
    }
}

fn peer_rate(peer: &Peer) -> f64 {
    peer.drain_per_second
}

/// Shows a figure as soon as it is measured, so a later failure does not lose it.
fn announce<T: std::fmt::Debug>(figure: T) -> T {
    eprintln!("  {figure:?}");
    figure
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut sizes = if args.smoke {
        Sizes {
            burn_down_jobs: 500,
            runs: 1,
            workers: 1,
            apalis_concurrency: 16,
            pickup_jobs: 50,
            pickup_per_second: 100.0,
            api_seconds: 1.0,
            sse_subscribers: 5,
            sse_jobs: 20,
            agents: agents::AgentSizes {
                embed_texts: 64,
                vectors: 1_000,
                searches: 20,
                tasks: 200,
                rss_tasks: 10,
            },
        }
    } else {
        Sizes {
            burn_down_jobs: 20_000,
            runs: 3,
            workers: 2,
            apalis_concurrency: 64,
            pickup_jobs: 2_000,
            pickup_per_second: 200.0,
            api_seconds: 10.0,
            sse_subscribers: 500,
            sse_jobs: 1_000,
            agents: agents::AgentSizes {
                embed_texts: 1_280,
                vectors: 100_000,
                searches: 500,
                tasks: 10_000,
                rss_tasks: 500,
            },
        }
    };
    if let Some(jobs) = args.burn_down_jobs {
        sizes.burn_down_jobs = jobs;
    }
    if let Some(runs) = args.runs {
        sizes.runs = runs.max(1);
    }
    let history_sizes = history::HistorySizes {
        finished_jobs: args
            .finished_jobs
            .unwrap_or(if args.smoke { 5_000 } else { 10_000_000 }),
        scrapes: if args.smoke { 1 } else { 5 },
        queue_reads: if args.smoke { 5 } else { 50 },
    };
    let with_peers = !args.smoke && !args.no_peers;
    let runs = |measure: Measure| {
        let peer = matches!(measure, Measure::Bullmq | Measure::Celery);
        (args.only.is_empty() || args.only.contains(&measure)) && (with_peers || !peer)
    };
    std::fs::create_dir_all(&args.work_dir)?;
    // Absolute: the peers run from other directories.
    let work_dir = std::fs::canonicalize(&args.work_dir)?;
    let mut report = Report {
        sizes: sizes.clone(),
        burn_down: None,
        pickup: None,
        api_single: None,
        api_batch: None,
        sse: None,
        apalis: None,
        celery: None,
        bullmq: None,
        bullmq_pickup: None,
        bullmq_add_bulk: None,
        agents: None,
        history_sizes: history_sizes.clone(),
        history: None,
        future_jobs: args
            .future_jobs
            .unwrap_or(if args.smoke { 20_000 } else { 1_000_000 }),
        beside_future: None,
        scaling: Vec::new(),
    };
    if runs(Measure::BurnDown) {
        eprintln!("taskfleet burn-down ({} jobs)…", sizes.burn_down_jobs);
        report.burn_down = Some(
            median_of(
                sizes.runs,
                |b: &ours::BurnDown| b.per_second,
                || ours::burn_down(&sizes),
            )
            .await?,
        );
    }
    if runs(Measure::FutureJobs) {
        let future = report.future_jobs;
        eprintln!(
            "taskfleet burn-down ({} jobs) beside {future} jobs set for tomorrow…",
            sizes.burn_down_jobs
        );
        report.beside_future = Some(
            median_of(
                sizes.runs,
                |b: &ours::BurnDown| b.per_second,
                || ours::burn_down_beside(&sizes, future),
            )
            .await?,
        );
    }
    if runs(Measure::Scaling) {
        let fleets: &[usize] = if args.smoke { &[1, 2] } else { &[1, 2, 4] };
        for &workers in fleets {
            eprintln!(
                "taskfleet burn-down ({} jobs) with {workers} worker processes…",
                sizes.burn_down_jobs
            );
            let fleet = Sizes {
                workers,
                ..sizes.clone()
            };
            let run = median_of(
                sizes.runs,
                |b: &ours::BurnDown| b.per_second,
                || ours::burn_down(&fleet),
            )
            .await?;
            report.scaling.push((workers, run));
        }
    }
    if runs(Measure::Pickup) {
        eprintln!("taskfleet pickup latency…");
        report.pickup = Some(
            median_of(
                sizes.runs,
                |p: &ours::Pickup| p.total.p99,
                || ours::pickup(&sizes),
            )
            .await?,
        );
    }
    if runs(Measure::Api) {
        eprintln!("taskfleet API enqueue rate…");
        // Two figures a run, each with its own median.
        let all = repeated(sizes.runs, || ours::api_rate(&sizes)).await?;
        let each =
            |of: fn(&ours::ApiRate) -> f64| median_by(all.iter().map(of).collect(), |r: &f64| *r);
        report.api_single = each(|a: &ours::ApiRate| a.single_per_second);
        report.api_batch = each(|a: &ours::ApiRate| a.batch_jobs_per_second);
    }
    if runs(Measure::Sse) {
        eprintln!("taskfleet SSE fan-out…");
        report.sse = Some(announce(ours::sse(&sizes).await?));
    }
    if runs(Measure::Agents) {
        report.agents = Some(agents::measure(&sizes.agents).await?);
    }
    if runs(Measure::History) {
        eprintln!(
            "taskfleet statistics over {} finished jobs…",
            history_sizes.finished_jobs
        );
        report.history = Some(announce(history::measure(&history_sizes).await?));
    }
    if runs(Measure::Apalis) {
        eprintln!("raw apalis-redis…");
        report.apalis = Some(
            median_of(sizes.runs, peer_rate, || {
                peers::apalis_redis(
                    &args.redis_url,
                    sizes.burn_down_jobs,
                    sizes.apalis_concurrency,
                )
            })
            .await?,
        );
    }
    if runs(Measure::Bullmq) {
        eprintln!("BullMQ…");
        // Each run of the script measures the drain, the pickup and `addBulk`; each figure
        // takes its median over the runs on its own, as ours do.
        let all = repeated(sizes.runs, || {
            peers::bullmq(
                &work_dir,
                &args.redis_url,
                sizes.burn_down_jobs,
                sizes.pickup_jobs,
                sizes.pickup_per_second,
                sizes.api_seconds,
            )
        })
        .await?;
        report.bullmq_pickup = median_by(
            all.iter().filter_map(|p| p.pickup).collect(),
            |l: &Latency| l.p99,
        );
        report.bullmq_add_bulk = median_by(
            all.iter().filter_map(|p| p.add_bulk_per_second).collect(),
            |r: &f64| *r,
        );
        report.bullmq = median_by(all, peer_rate);
    }
    if runs(Measure::Celery) {
        eprintln!("Celery…");
        report.celery = Some(
            median_of(sizes.runs, peer_rate, || {
                peers::celery(&work_dir, &args.redis_url, sizes.burn_down_jobs)
            })
            .await?,
        );
    }
    let report = report.markdown();
    println!("{report}");
    if let Some(out) = args.out {
        let mut doc = String::from("# Benchmarks\n\n");
        doc.push_str(&report);
        doc.push_str(concat!(
            "\nHow each figure is taken (`bench/`): the fleet runs with the worker's shipped defaults (no ",
            "`--concurrency`); the executors it ran on the `executor` queue, where the no-ops run, are summed from the ",
            "worker registry (each worker's concurrency as it registered), beside BullMQ's concurrency of 100. ",
            "Burn-down submits the backlog through the batch API, then starts the ",
            "workers, and divides the jobs by the time from the first start to the last success in the ledger (every ",
            "start and success is checked to be recorded). Celery and BullMQ drain a pre-filled queue; raw apalis-redis ",
            "(one worker, concurrency 64) is fed ",
            "in windows of 1,000, as our dispatcher feeds Redis (a backlog pushed at once breaks it: DESIGN.md hazard 1). ",
            "Peers are timed from the first ",
            "completion to the last. Every measure a target compares with a peer runs three times (`--runs`) for each ",
            "system, all in the same invocation: each system's burn-down, our pickup and API measures, and the BullMQ ",
            "script (a drain, a pickup and an `addBulk` run each time). A rate counts as the median of its runs, the ",
            "range beside it (a burn-down's RSS comes from the run with the median rate); a pickup counts as the run ",
            "with the median p99, whose p50, max and stages come along (BullMQ's likewise, over its script's runs); ",
            "the ratios compare these medians. Pickup latency runs from sending `POST /v1/jobs` to the ledger's start of the job ",
            "(BullMQ: from `queue.add` to the processor's start). SSE latency runs from an event's ledger timestamp to ",
            "its arrival at each subscriber (the 500 clients run on the same cores as the fleet). The API rates count ",
            "jobs answered 201 in 10 s; their client, on the same cores too, encodes its body once and does not parse the ",
            "answers. BullMQ's `addBulk` rate counts the jobs of the calls answered in 10 s, from 8 callers with a ",
            "connection each, each calling `addBulk` with 1,000 no-op jobs again and again (no worker runs; the queue ",
            "is emptied after). RSS is each process's `VmHWM`. The statistics measure times `/metrics` (each scrape after the API's ",
            "5 s reuse of its ledger gauges has run out) and `GET /v1/queues` on an empty ledger, then again after the ",
            "finished jobs were written straight into it (finished from 16 minutes to 23 hours ago) and vacuumed.\n\nWhat limits these figures and what to change next: ",
            "[the hot path's diary](perf/hot-path.md); the decisions that stand: ",
            "[ADR 0007](adr/0007-hot-path.md).\n"
        ));
        std::fs::write(&out, doc)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_run_counts_with_the_range_beside_it() {
        let m = median_by(vec![3.0, 1.0, 2.0], |r: &f64| *r).unwrap();
        assert_eq!((m.value, m.least, m.most), (2.0, 1.0, 3.0));
        assert_eq!(m.shown("/s"), "2/s (1–3)");
        // Of an even number, the greater of the two middle runs.
        assert_eq!(
            median_by(vec![4.0, 1.0, 3.0, 2.0], |r: &f64| *r)
                .unwrap()
                .value,
            3.0
        );
        let once = median_by(vec![7.0], |r: &f64| *r).unwrap();
        assert_eq!(once.shown(" jobs/s"), "7 jobs/s");
        assert!(median_by(Vec::<f64>::new(), |r: &f64| *r).is_none());
    }

    #[test]
    fn a_target_says_whether_it_is_met_or_was_not_measured() {
        let times = |r: f64| format!("{r:.2}×");
        let at_least = |r: f64| r >= 1.0;
        assert_eq!(
            verdict("burn-down vs BullMQ", Some(0.93), times, "≥ 1.0×", at_least),
            "burn-down vs BullMQ 0.93× (target ≥ 1.0×: not met)"
        );
        assert_eq!(
            verdict("burn-down vs BullMQ", Some(1.2), times, "≥ 1.0×", at_least),
            "burn-down vs BullMQ 1.20× (target ≥ 1.0×: met)"
        );
        assert_eq!(
            verdict("burn-down vs BullMQ", None, times, "≥ 1.0×", at_least),
            "burn-down vs BullMQ — (target ≥ 1.0×: not measured)"
        );
    }
}
