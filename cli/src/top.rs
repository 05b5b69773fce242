//! `taskfleet top`: the queues (depth, rate, failure rate, wait p95) and the workers,
//! redrawn in place like `htop`; and `queues` and `workers`, the same tables once, with
//! pausing and resuming a queue.

use std::{process::ExitCode, time::Duration};

use clap::{Args, Subcommand};
use console::Term;
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    api::Api,
    fail::Failure,
    print_json, render,
    screen::Screen,
    table::{Table, terminal_width},
};

/// Watch the queues and workers, refreshed in place (q or Ctrl-C quits)
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet top
  taskfleet top --interval 5
  taskfleet top --once --json      # one snapshot of queues and workers, for scripts

Workers are listed for operator keys; a tenant key sees its own jobs' numbers.")]
pub struct TopArgs {
    /// Seconds between refreshes
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Print one snapshot and exit (what happens when the output is not a terminal)
    #[arg(long)]
    once: bool,
}

/// List the queues, or pause or resume one
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet queues
  taskfleet queues pause executor
  taskfleet queues resume executor")]
pub struct QueuesArgs {
    #[command(subcommand)]
    action: Option<QueueAction>,
}

#[derive(Subcommand, Debug)]
enum QueueAction {
    /// Stop starting a queue's jobs (they are still accepted; running ones finish); needs an
    /// operator key
    #[command(after_help = "Examples:\n  taskfleet queues pause executor")]
    Pause { queue: String },
    /// Start a paused queue's jobs again; needs an operator key
    #[command(after_help = "Examples:\n  taskfleet queues resume executor")]
    Resume { queue: String },
}

/// List the worker processes (needs an operator key)
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  taskfleet workers\n  taskfleet workers --json | jq -r 'select(.leader) | .name'"
)]
pub struct WorkersArgs {}

pub async fn queues(api: &Api, args: QueuesArgs, json: bool) -> Result<ExitCode, Failure> {
    let (verb, queue) = match args.action {
        None => {
            let queues = api.get("/v1/queues", &[]).await?;
            if json {
                queues["queues"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .for_each(print_json);
            } else {
                queue_table(&queues).print();
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(QueueAction::Pause { queue }) => ("pause", queue),
        Some(QueueAction::Resume { queue }) => ("resume", queue),
    };
    let info = api
        .post(&format!("/v1/queues/{queue}/{verb}"), &json!({}))
        .await?;
    if json {
        print_json(&info);
    } else if info["paused"] == true {
        println!("queue {queue} is paused: its jobs are accepted and wait; running ones finish");
    } else {
        println!("queue {queue} is running");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn workers(api: &Api, _args: WorkersArgs, json: bool) -> Result<ExitCode, Failure> {
    let workers = api.get("/v1/workers", &[]).await?;
    if json {
        workers["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .for_each(print_json);
    } else {
        worker_table(&workers).print();
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(api: &Api, args: TopArgs, json: bool) -> Result<ExitCode, Failure> {
    let term = Term::stdout();
    if args.once || json || !term.is_term() {
        let queues = api.get("/v1/queues", &[]).await?;
        let workers = api.get("/v1/workers", &[]).await;
        if json {
            print_json(
                &json!({"queues": queues["queues"], "workers": workers.ok().map(|w| w["workers"].clone())}),
            );
        } else {
            print!("{}", frame(api, Ok(queues), workers, terminal_width(), ""));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let interval = Duration::try_from_secs_f64(args.interval)
        .unwrap_or(Duration::from_secs(2))
        .clamp(Duration::from_millis(200), Duration::from_secs(3_600));
    let (quit, mut stop) = tokio::sync::mpsc::channel(1);
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        let mut signals =
            signal(kind).map_err(|err| Failure::local("listening for signals", err))?;
        let quit = quit.clone();
        tokio::spawn(async move {
            signals.recv().await;
            let _ = quit.send(()).await;
        });
    }
    // Ctrl-Z stops `top` only after the terminal is put back (`Screen::suspend`).
    let (suspend, mut suspended) = tokio::sync::mpsc::channel(1);
    let mut stops = signal(SignalKind::from_raw(libc::SIGTSTP))
        .map_err(|err| Failure::local("listening for signals", err))?;
    tokio::spawn(async move {
        while stops.recv().await.is_some() {
            if suspend.send(()).await.is_err() {
                return;
            }
        }
    });
    // Dropped on every way out of this function, which puts the terminal back.
    let screen = Screen::enter();
    screen.forward_quit_keys(quit);
    let quit_hint = if screen.reads_keys() {
        "q quits"
    } else {
        "Ctrl-C quits"
    };
    loop {
        let fetched = async {
            (
                api.get("/v1/queues", &[]).await,
                api.get("/v1/workers", &[]).await,
            )
        };
        let (queues, workers) = tokio::select! {
            fetched = fetched => fetched,
            _ = stop.recv() => return Ok(ExitCode::SUCCESS),
            _ = suspended.recv() => {
                screen.suspend();
                continue;
            }
        };
        if let Err(failure @ Failure::Api { status: 401, .. }) = queues {
            return Err(failure);
        }
        let (rows, cols) = term.size();
        let text = frame(api, queues, workers, Some(usize::from(cols)), quit_hint);
        let lines: Vec<&str> = text.lines().take(usize::from(rows)).collect();
        screen.draw(&lines);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.recv() => return Ok(ExitCode::SUCCESS),
            _ = suspended.recv() => screen.suspend(),
        }
    }
}

/// One screen of `top`.
fn frame(
    api: &Api,
    queues: Result<Value, Failure>,
    workers: Result<Value, Failure>,
    width: Option<usize>,
    quit_hint: &str,
) -> String {
    let mut text = format!(
        "{}  {}  {}  {}\n\n",
        console::style("taskfleet top").bold(),
        api.url(),
        chrono::Local::now().format("%H:%M:%S"),
        console::style(quit_hint).dim()
    );
    match queues {
        Ok(queues) => text.push_str(&queue_table(&queues).render(width)),
        Err(failure) => text.push_str(&format!("{} {failure}\n", console::style("queues:").red())),
    }
    text.push('\n');
    match workers {
        Ok(workers) => text.push_str(&worker_table(&workers).render(width)),
        Err(Failure::Api { status: 403, .. }) => {
            text.push_str(&format!(
                "{}\n",
                console::style("workers: listed for operator keys").dim()
            ));
        }
        Err(failure) => text.push_str(&format!("{} {failure}\n", console::style("workers:").red())),
    }
    text
}

/// A worker's job slots: its concurrency, per queue or in all.
fn slots(concurrency: &Value) -> u64 {
    match concurrency {
        Value::Object(per_queue) => per_queue.values().filter_map(Value::as_u64).sum(),
        other => other.as_u64().unwrap_or(0),
    }
}

/// The bars of a sparkline, lowest to highest.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

fn queue_table(queues: &Value) -> Table {
    let mut table = Table::new(&[
        "QUEUE",
        "STATE",
        "QUEUED",
        "RUNNING",
        "RETRYING",
        "SCHEDULED",
        "DONE/MIN",
        "FAILED",
        "WAIT P95",
        "LAST 15 MIN",
    ]);
    for queue in queues["queues"].as_array().into_iter().flatten() {
        let depth = |state: &str| queue["depth"][state].as_i64().unwrap_or(0);
        let per_minute: Vec<i64> = queue["throughput"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                ["succeeded", "dead", "cancelled"]
                    .iter()
                    .map(|s| m[*s].as_i64().unwrap_or(0))
                    .sum()
            })
            .collect();
        // The last minute is still going: the rate is over the five before it.
        let complete = &per_minute[..per_minute.len().saturating_sub(1)];
        let recent = &complete[complete.len().saturating_sub(5)..];
        let rate = if recent.is_empty() {
            0.0
        } else {
            recent.iter().sum::<i64>() as f64 / recent.len() as f64
        };
        let top = per_minute.iter().copied().max().unwrap_or(0).max(1);
        let spark: String = per_minute
            .iter()
            .map(|&n| {
                if n == 0 {
                    ' '
                } else {
                    BARS[((n * 7) / top) as usize]
                }
            })
            .collect();
        let failed = match queue["failure_rate"].as_f64() {
            Some(rate) if rate > 0.0 => console::style(format!("{:.1}%", rate * 100.0))
                .red()
                .to_string(),
            Some(_) => "0%".to_owned(),
            None => "-".to_owned(),
        };
        table.row(vec![
            render::text(&queue["name"]),
            if queue["paused"] == true {
                console::style("paused").yellow().bold().to_string()
            } else {
                console::style("active").green().to_string()
            },
            depth("queued").to_string(),
            depth("running").to_string(),
            depth("retrying").to_string(),
            depth("scheduled").to_string(),
            format!("{rate:.0}"),
            failed,
            queue["wait_p95_seconds"]
                .as_f64()
                .map(render::seconds)
                .unwrap_or_else(|| "-".to_owned()),
            console::style(spark).cyan().to_string(),
        ]);
    }
    table
}

fn worker_table(workers: &Value) -> Table {
    let mut table = Table::new(&[
        "WORKER",
        "HOST",
        "QUEUES",
        "ACTIVE",
        "DONE",
        "FAILED",
        "HEARTBEAT",
        "STATUS",
    ]);
    for worker in workers["workers"].as_array().into_iter().flatten() {
        let active = worker["active_jobs"].as_array().map_or(0, Vec::len);
        let status = if worker["online"] != true {
            console::style("offline").dim().to_string()
        } else if worker["leader"] == true {
            console::style("leader").cyan().bold().to_string()
        } else {
            console::style("online").green().to_string()
        };
        let queues: Vec<String> = worker["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .map(render::text)
            .collect();
        table.row(vec![
            render::text(&worker["name"]),
            render::text(&worker["host"]),
            queues.join(","),
            format!("{active}/{}", slots(&worker["concurrency"])),
            render::text(&worker["processed"]),
            render::text(&worker["failed"]),
            worker["heartbeat_age_seconds"]
                .as_f64()
                .map(|s| format!("{} ago", render::seconds(s)))
                .unwrap_or_default(),
            status,
        ]);
    }
    table
}
