//! `make bench`: measures taskfleet and its peers side by side on this machine and writes
//! the figures to `docs/BENCHMARKS.md`. `--smoke` runs every taskfleet measure (and raw
//! apalis-redis) with small sizes, to keep the program working; `make test` runs it.

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
    /// How many times each system's burn-down runs instead of its size's default (3; 1 for
    /// `--smoke`): the report gives the median and the range.
    #[arg(long)]
    burn_down_runs: Option<usize>,
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
}

/// What was measured; `None` where a measure did not run.
struct Report {
    sizes: Sizes,
    burn_down: Option<Drains<ours::BurnDown>>,
    pickup: Option<ours::Pickup>,
    api: Option<ours::ApiRate>,
    sse: Option<Latency>,
    apalis: Option<Drains<Peer>>,
    celery: Option<Drains<Peer>>,
    bullmq: Option<Drains<Peer>>,
    agents: Option<agents::AgentFigures>,
    history_sizes: history::HistorySizes,
    history: Option<history::HistoryFigures>,
    /// Jobs set for tomorrow beside the burn-down of [`Report::beside_future`].
    future_jobs: usize,
    beside_future: Option<Drains<ours::BurnDown>>,
}

/// A burn-down run several times: one drain lasts a second or two, and on a shared two-core
/// machine successive drains of the same build differ (by 3% for us and 12% for BullMQ in
/// one run of the bench; by a tenth for us between invocations).
#[derive(Debug, Clone, Copy)]
struct Drains<T> {
    /// The run with the median rate (its other figures, RSS or BullMQ's pickup, come along).
    median: T,
    rate: f64,
    slowest: f64,
    fastest: f64,
}

impl<T> Drains<T> {
    /// The median rate, and the range when there was more than one run.
    fn shown(&self) -> String {
        if self.slowest == self.fastest {
            format!("{:.0}/s", self.rate)
        } else {
            format!(
                "{:.0}/s ({:.0}–{:.0})",
                self.rate, self.slowest, self.fastest
            )
        }
    }
}

/// Runs a burn-down `runs` times (at least once) and keeps the middle run by rate (of an
/// even number, the faster of the two middle ones).
async fn drains<T: std::fmt::Debug, Fut>(
    runs: usize,
    rate: impl Fn(&T) -> f64,
    mut run: impl FnMut() -> Fut,
) -> anyhow::Result<Drains<T>>
where
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut all = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        all.push(announce(run().await?));
    }
    all.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let (slowest, fastest) = (rate(&all[0]), rate(&all[all.len() - 1]));
    let median = all.swap_remove(all.len() / 2);
    Ok(Drains {
        rate: rate(&median),
        median,
        slowest,
        fastest,
    })
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

fn ratio(ours: Option<f64>, peer: Option<f64>) -> String {
    match (ours, peer) {
        (Some(ours), Some(peer)) => format!("{:.2}×", ours / peer),
        _ => "—".to_owned(),
    }
}

/// `figure` formatted, or a dash where it was not measured.
fn shown<T>(figure: Option<T>, format: impl Fn(T) -> String) -> String {
    figure.map_or("—".to_owned(), format)
}

fn latency(l: Latency) -> String {
    format!("{:.1} / {:.1} / {:.1} ms", l.p50, l.p99, l.max)
}

impl Report {
    fn markdown(&self) -> String {
        let s = &self.sizes;
        let drain = |peer: &Option<Drains<Peer>>| peer.map(|p| p.rate);
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
        let per_second = |rate: f64| format!("{rate:.0}/s");
        let drain_rate = |peer: &Option<Drains<Peer>>| shown(*peer, |p| p.shown());
        let ours_rate = self.burn_down.map(|b| b.rate);
        let _ = writeln!(
            out,
            "| burn-down, {} no-op jobs, {} workers × {} (full ledger lifecycle){} | {} | {} | {} | {} | ≥ BullMQ, ≥ 10× Celery |",
            s.burn_down_jobs,
            s.workers,
            s.concurrency,
            match s.burn_down_runs {
                1 => String::new(),
                runs => format!("; median (range) of {runs} runs"),
            },
            shown(self.burn_down, |b| b.shown()),
            drain_rate(&self.apalis),
            drain_rate(&self.bullmq),
            drain_rate(&self.celery)
        );
        let _ = writeln!(
            out,
            "| burn-down beside {} jobs set for tomorrow | {} | | | | within 10% of the burn-down ({}) |",
            self.future_jobs,
            shown(self.beside_future, |b| b.shown()),
            shown(
                self.beside_future.map(|b| b.rate).zip(ours_rate),
                |(beside, alone)| format!("{:+.0}%", (beside / alone - 1.0) * 100.0)
            )
        );
        let _ = writeln!(
            out,
            "| pickup latency p50 / p99 / max, {} jobs at {}/s | {} | — | {} | — | p99 ≤ 5 ms |",
            s.pickup_jobs,
            s.pickup_per_second,
            shown(self.pickup.map(|p| p.total), latency),
            shown(self.bullmq.and_then(|p| p.median.pickup), latency)
        );
        let _ = writeln!(
            out,
            "| pickup by stage, p50 / p99: request → ledger row, row → pushed to Redis, pushed → started | {} | | | | |",
            shown(self.pickup, |p| {
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
            "| API, single `POST /v1/jobs`, 64 connections | {} | | | | ≥ 5,000/s |",
            shown(self.api.map(|a| a.single_per_second), per_second)
        );
        let _ = writeln!(
            out,
            "| API, `POST /v1/jobs/batch` of 1,000, 8 connections | {} | | | | ≥ 50,000/s |",
            shown(self.api.map(|a| a.batch_jobs_per_second), |r| format!(
                "{r:.0} jobs/s"
            ))
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
                b.median.worker_peak_rss_mib, b.median.api_peak_rss_mib
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
        let _ = writeln!(
            out,
            "\nRatios (taskfleet / peer, burn-down): raw apalis-redis {}, BullMQ {}, Celery {}.",
            ratio(ours_rate, drain(&self.apalis)),
            ratio(ours_rate, drain(&self.bullmq)),
            ratio(ours_rate, drain(&self.celery)),
        );
        out
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
            burn_down_runs: 1,
            workers: 1,
            concurrency: 16,
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
            burn_down_runs: 3,
            workers: 2,
            concurrency: 64,
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
    if let Some(runs) = args.burn_down_runs {
        sizes.burn_down_runs = runs.max(1);
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
        api: None,
        sse: None,
        apalis: None,
        celery: None,
        bullmq: None,
        agents: None,
        history_sizes: history_sizes.clone(),
        history: None,
        future_jobs: args
            .future_jobs
            .unwrap_or(if args.smoke { 20_000 } else { 1_000_000 }),
        beside_future: None,
    };
    if runs(Measure::BurnDown) {
        eprintln!("taskfleet burn-down ({} jobs)…", sizes.burn_down_jobs);
        report.burn_down = Some(
            drains(
                sizes.burn_down_runs,
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
            drains(
                sizes.burn_down_runs,
                |b: &ours::BurnDown| b.per_second,
                || ours::burn_down_beside(&sizes, future),
            )
            .await?,
        );
    }
    if runs(Measure::Pickup) {
        eprintln!("taskfleet pickup latency…");
        report.pickup = Some(announce(ours::pickup(&sizes).await?));
    }
    if runs(Measure::Api) {
        eprintln!("taskfleet API enqueue rate…");
        report.api = Some(announce(ours::api_rate(&sizes).await?));
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
            drains(sizes.burn_down_runs, peer_rate, || {
                peers::apalis_redis(&args.redis_url, sizes.burn_down_jobs, sizes.concurrency)
            })
            .await?,
        );
    }
    if runs(Measure::Bullmq) {
        eprintln!("BullMQ…");
        report.bullmq = Some(
            drains(sizes.burn_down_runs, peer_rate, || {
                peers::bullmq(
                    &work_dir,
                    &args.redis_url,
                    sizes.burn_down_jobs,
                    sizes.pickup_jobs,
                    sizes.pickup_per_second,
                )
            })
            .await?,
        );
    }
    if runs(Measure::Celery) {
        eprintln!("Celery…");
        report.celery = Some(
            drains(sizes.burn_down_runs, peer_rate, || {
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
            "\nHow each figure is taken (`bench/`): burn-down submits the backlog through the batch API, then starts the ",
            "workers, and divides the jobs by the time from the first start to the last success in the ledger (every ",
            "start and success is checked to be recorded). Celery and BullMQ drain a pre-filled queue; raw apalis-redis is fed ",
            "in windows of 1,000, as our dispatcher feeds Redis (a backlog pushed at once breaks it: DESIGN.md hazard 1). ",
            "Peers are timed from the first ",
            "completion to the last. Each system's burn-down runs several times, and the run with the median rate ",
            "counts (its RSS, and BullMQ's pickup, come from that run); ratios compare medians. Pickup latency runs from sending `POST /v1/jobs` to the ledger's start of the job ",
            "(BullMQ: from `queue.add` to the processor's start). SSE latency runs from an event's ledger timestamp to ",
            "its arrival at each subscriber (the 500 clients run on the same cores as the fleet). The API rates count ",
            "jobs answered 201 in 10 s; their client, on the same cores too, encodes its body once and does not parse the ",
            "answers. RSS is each process's `VmHWM`. The statistics measure times `/metrics` (each scrape after the API's ",
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
