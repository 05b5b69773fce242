//! `taskfleet jobs`, `job`, `cancel` and `retry`: the ledger's jobs, one page or one job
//! with its timeline, and the two things an operator does to a job by hand.

use std::{process::ExitCode, time::Duration};

use clap::Args;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    api::Api,
    fail::Failure,
    print_json, render,
    sse::{EventStream, Item},
    table::Table,
};

/// List jobs, newest first
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet jobs
  taskfleet jobs --state dead --queue executor
  taskfleet jobs --kind ingest.connector --limit 200
  taskfleet jobs --state running --json | jq -r .id")]
pub struct ListArgs {
    /// scheduled, queued, running, retrying, succeeded, dead or cancelled
    #[arg(long)]
    state: Option<String>,
    /// ingest, embed, agent, test, executor or schedule
    #[arg(long)]
    queue: Option<String>,
    /// A job kind, e.g. executor.run
    #[arg(long)]
    kind: Option<String>,
    /// How many (the API gives up to 500 a page; more are fetched page by page)
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

/// Show one job: its fields, its result or error, and its event timeline
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet job 01939c2e-7f7a-7d3c-9a51-0c0f6b1d2e3f
  taskfleet job 01939c2e-7f7a-7d3c-9a51-0c0f6b1d2e3f --json | jq .result")]
pub struct ShowArgs {
    /// The job's id
    #[arg(value_parser = crate::api::id)]
    id: String,
}

/// Act on one job (cancel: stop it, or keep it from starting; retry: run a dead or
/// cancelled job again)
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet cancel 01939c2e-7f7a-7d3c-9a51-0c0f6b1d2e3f
  taskfleet retry 01939c2e-7f7a-7d3c-9a51-0c0f6b1d2e3f
  taskfleet jobs --state dead --json | jq -r .id | xargs -n1 taskfleet retry")]
pub struct IdArgs {
    /// The job's id
    #[arg(value_parser = crate::api::id)]
    id: String,
}

pub async fn list(api: &Api, args: ListArgs, json: bool) -> Result<ExitCode, Failure> {
    let mut query = Vec::new();
    for (name, value) in [
        ("state", &args.state),
        ("queue", &args.queue),
        ("kind", &args.kind),
    ] {
        if let Some(value) = value {
            query.push((name, value.clone()));
        }
    }
    let jobs = api.collect("/v1/jobs", "jobs", &query, args.limit).await?;
    if json {
        jobs.iter().for_each(print_json);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "ID",
        "STATE",
        "QUEUE",
        "KIND",
        "TRY",
        "CREATED",
        "PROGRESS / ERROR",
    ]);
    for job in &jobs {
        let kind = match job["payload"]["tool"].as_str() {
            Some(tool) => format!("{} {tool}", render::text(&job["kind"])),
            None => render::text(&job["kind"]),
        };
        let note = if !job["error"].is_null() {
            console::style(render::first_line(&render::text(&job["error"])).to_owned())
                .red()
                .to_string()
        } else if job["state"] == "running" {
            match job["progress_percent"].as_f64() {
                Some(p) => format!("{p:.0}% {}", render::text(&job["progress_message"])),
                None => render::text(&job["progress_message"]),
            }
        } else {
            String::new()
        };
        table.row(vec![
            render::text(&job["id"]),
            render::state(job["state"].as_str().unwrap_or_default()),
            render::text(&job["queue"]),
            kind,
            format!("{}/{}", job["attempt"], job["max_attempts"]),
            render::relative(&job["created_at"]),
            note,
        ]);
    }
    if table.is_empty() {
        eprintln!("no jobs match");
    } else {
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(api: &Api, args: ShowArgs, json: bool) -> Result<ExitCode, Failure> {
    let job = api.get(&format!("/v1/jobs/{}", args.id), &[]).await?;
    let events = timeline(api, &args.id).await?;
    if json {
        let mut job = job;
        job["events"] = Value::Array(events);
        print_json(&job);
        return Ok(ExitCode::SUCCESS);
    }
    let field = |name: &str| render::text(&job[name]);
    println!(
        "{} {}  {}  {}",
        console::style("job").bold(),
        field("id"),
        field("kind"),
        render::state(&field("state"))
    );
    let mut rows = vec![
        ("queue", field("queue")),
        (
            "attempt",
            format!("{} of {}", field("attempt"), field("max_attempts")),
        ),
        ("priority", field("priority")),
        ("created", render::when(&job["created_at"])),
        ("runs at", render::when(&job["run_at"])),
        ("started", render::when(&job["started_at"])),
        ("finished", render::when(&job["finished_at"])),
        ("worker", field("worker")),
        ("request", field("request_id")),
    ];
    if let Some(percent) = job["progress_percent"].as_f64() {
        rows.push((
            "progress",
            format!("{percent:.0}% {}", field("progress_message")),
        ));
    }
    if !job["cancel_requested_at"].is_null() {
        rows.push(("cancel asked", render::when(&job["cancel_requested_at"])));
    }
    for (name, value) in rows.into_iter().filter(|(_, v)| !v.is_empty() && v != "-") {
        println!("  {:<13}{value}", console::style(name).dim());
    }
    if !job["result"].is_null() {
        println!("  {:<13}{}", console::style("result").dim(), job["result"]);
    }
    for failed in job["attempt_errors"].as_array().into_iter().flatten() {
        println!(
            "  {:<13}{}",
            console::style(format!("attempt {}", failed["attempt"])).dim(),
            console::style(render::text(&failed["error"])).red()
        );
    }
    if !events.is_empty() {
        println!("{}", console::style("timeline").bold());
    }
    for event in &events {
        let name = render::text(&event["event"]);
        println!(
            "  {}  {:<22} {:<18} {}",
            render::clock(&event["ts"]),
            render::event(&name),
            render::text(&event["actor"]),
            render::details(&name, &event["details"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A job's events up to now. Its stream replays them and, for a job still going, stays
/// open: the replay is over when the stream ends or goes quiet. The first event may take a
/// while (the stream is opened and the history read); a job that keeps reporting is cut
/// after a few seconds.
async fn timeline(api: &Api, id: &str) -> Result<Vec<Value>, Failure> {
    let mut stream = EventStream::of_job(api, id, None);
    let mut events = Vec::new();
    let cut_at = Instant::now() + Duration::from_secs(5);
    loop {
        let quiet = if events.is_empty() {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(500)
        };
        let until = (Instant::now() + quiet).min(cut_at);
        let Ok(next) = tokio::time::timeout_at(until, stream.next()).await else {
            break;
        };
        match next? {
            None | Some(Item::Reconnecting(_)) => break,
            Some(Item::Event(message)) => events.push(message.data),
        }
    }
    Ok(events)
}

pub async fn cancel(api: &Api, args: IdArgs, json: bool) -> Result<ExitCode, Failure> {
    let job = api
        .post(&format!("/v1/jobs/{}/cancel", args.id), &json!({}))
        .await?;
    if json {
        print_json(&job);
    } else if job["state"] == "cancelled" {
        println!("job {} cancelled", args.id);
    } else {
        println!(
            "job {} is {}: asked to stop; it ends cancelled when its worker sees the request",
            args.id,
            render::text(&job["state"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn retry(api: &Api, args: IdArgs, json: bool) -> Result<ExitCode, Failure> {
    let job = api
        .post(&format!("/v1/jobs/{}/retry", args.id), &json!({}))
        .await?;
    if json {
        print_json(&job);
    } else {
        println!(
            "job {} is {} again (attempt {} of {})",
            args.id,
            render::text(&job["state"]),
            job["attempt"],
            job["max_attempts"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The job once it has ended, followed on its event stream.
pub async fn finished(api: &Api, id: &str) -> Result<Value, Failure> {
    let mut stream = EventStream::of_job(api, id, None);
    while stream.next().await?.is_some() {}
    api.get(&format!("/v1/jobs/{id}"), &[]).await
}
