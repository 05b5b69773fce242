//! `make bench`: measures taskfleet and its peers side by side on this machine and writes
//! the figures to `docs/BENCHMARKS.md`. `--smoke` runs every taskfleet measure (and raw
//! apalis-redis) with small sizes, to keep the program working; `make test` runs it.

mod ours;
mod peers;
mod stats;

use std::{fmt::Write as _, path::PathBuf};

use clap::Parser;
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
    /// Write the report here (Markdown).
    #[arg(long)]
    out: Option<PathBuf>,
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

struct Report {
    sizes: Sizes,
    burn_down: ours::BurnDown,
    pickup: Latency,
    api: ours::ApiRate,
    sse: Latency,
    apalis: Peer,
    celery: Option<Peer>,
    bullmq: Option<Peer>,
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

fn ratio(ours: f64, peer: Option<f64>) -> String {
    peer.map_or("—".to_owned(), |peer| format!("{:.2}×", ours / peer))
}

impl Report {
    fn markdown(&self) -> String {
        let s = &self.sizes;
        let drain = |peer: &Option<Peer>| peer.map(|p| p.drain_per_second);
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
        let peer_rate =
            |peer: &Option<Peer>| drain(peer).map_or("—".to_owned(), |r| format!("{r:.0}/s"));
        let _ = writeln!(
            out,
            "| burn-down, {} no-op jobs, {} workers × {} (full ledger lifecycle) | {:.0}/s | {:.0}/s | {} | {} | ≥ BullMQ, ≥ 10× Celery |",
            s.burn_down_jobs,
            s.workers,
            s.concurrency,
            self.burn_down.per_second,
            self.apalis.drain_per_second,
            peer_rate(&self.bullmq),
            peer_rate(&self.celery)
        );
        let bull_pickup = self.bullmq.and_then(|p| p.pickup);
        let _ = writeln!(
            out,
            "| pickup latency p50 / p99 / max, {} jobs at {}/s | {:.1} / {:.1} / {:.1} ms | — | {} | — | p99 ≤ 5 ms |",
            s.pickup_jobs,
            s.pickup_per_second,
            self.pickup.p50,
            self.pickup.p99,
            self.pickup.max,
            bull_pickup.map_or("—".to_owned(), |l| format!(
                "{:.1} / {:.1} / {:.1} ms",
                l.p50, l.p99, l.max
            ))
        );
        let _ = writeln!(
            out,
            "| API, single `POST /v1/jobs`, 64 connections | {:.0}/s | | | | ≥ 5,000/s |",
            self.api.single_per_second
        );
        let _ = writeln!(
            out,
            "| API, `POST /v1/jobs/batch` of 1,000, 8 connections | {:.0} jobs/s | | | | ≥ 50,000/s |",
            self.api.batch_jobs_per_second
        );
        let _ = writeln!(
            out,
            "| SSE delivery p50 / p99, {} subscribers, {} jobs | {:.1} / {:.1} ms ({} deliveries) | | | | |",
            s.sse_subscribers, s.sse_jobs, self.sse.p50, self.sse.p99, self.sse.samples
        );
        let _ = writeln!(
            out,
            "| peak RSS during burn-down: worker / API | {:.1} / {:.1} MiB | | | | worker ≤ 64 MiB |",
            self.burn_down.worker_peak_rss_mib, self.burn_down.api_peak_rss_mib
        );
        let _ = writeln!(
            out,
            "\nRatios (taskfleet / peer, burn-down): raw apalis-redis {}, BullMQ {}, Celery {}.",
            ratio(
                self.burn_down.per_second,
                Some(self.apalis.drain_per_second)
            ),
            ratio(self.burn_down.per_second, drain(&self.bullmq)),
            ratio(self.burn_down.per_second, drain(&self.celery)),
        );
        out
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sizes = if args.smoke {
        Sizes {
            burn_down_jobs: 500,
            workers: 1,
            concurrency: 16,
            pickup_jobs: 50,
            pickup_per_second: 100.0,
            api_seconds: 1.0,
            sse_subscribers: 5,
            sse_jobs: 20,
        }
    } else {
        Sizes {
            burn_down_jobs: 20_000,
            workers: 2,
            concurrency: 64,
            pickup_jobs: 2_000,
            pickup_per_second: 200.0,
            api_seconds: 10.0,
            sse_subscribers: 500,
            sse_jobs: 1_000,
        }
    };
    let with_peers = !args.smoke && !args.no_peers;
    std::fs::create_dir_all(&args.work_dir)?;
    eprintln!("taskfleet burn-down ({} jobs)…", sizes.burn_down_jobs);
    let burn_down = ours::burn_down(&sizes).await?;
    eprintln!("taskfleet pickup latency…");
    let pickup = ours::pickup(&sizes).await?;
    eprintln!("taskfleet API enqueue rate…");
    let api = ours::api_rate(&sizes).await?;
    eprintln!("taskfleet SSE fan-out…");
    let sse = ours::sse(&sizes).await?;
    eprintln!("raw apalis-redis…");
    let apalis =
        peers::apalis_redis(&args.redis_url, sizes.burn_down_jobs, sizes.concurrency).await?;
    let (mut celery, mut bullmq) = (None, None);
    if with_peers {
        eprintln!("BullMQ…");
        bullmq = Some(
            peers::bullmq(
                &args.work_dir,
                &args.redis_url,
                sizes.burn_down_jobs,
                sizes.pickup_jobs,
                sizes.pickup_per_second,
            )
            .await?,
        );
        eprintln!("Celery…");
        celery = Some(peers::celery(&args.work_dir, &args.redis_url, sizes.burn_down_jobs).await?);
    }
    let report = Report {
        sizes,
        burn_down,
        pickup,
        api,
        sse,
        apalis,
        celery,
        bullmq,
    }
    .markdown();
    println!("{report}");
    if let Some(out) = args.out {
        let mut doc = String::from("# Benchmarks\n\n");
        doc.push_str(&report);
        doc.push_str(concat!(
            "\nHow each figure is taken (`bench/`): burn-down submits the backlog through the batch API, then starts the ",
            "workers, and divides the jobs by the time from the first start to the last success in the ledger (every ",
            "start and success is checked to be recorded). Peers drain a pre-filled queue and are timed from the first ",
            "completion to the last. Pickup latency runs from sending `POST /v1/jobs` to the ledger's start of the job ",
            "(BullMQ: from `queue.add` to the processor's start). SSE latency runs from an event's ledger timestamp to ",
            "its arrival at each subscriber. RSS is each process's `VmHWM`.\n"
        ));
        std::fs::write(&out, doc)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
