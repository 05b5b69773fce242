//! `taskfleet tail`: the live event stream, one coloured line an event, followed across lost
//! connections and resumable across runs (`--since`).

use std::process::ExitCode;

use clap::Args;
use reqwest::Method;

use crate::{
    api::Api,
    fail::Failure,
    print_json, render,
    sse::{Ending, EventStream, Item},
};

/// Follow the live event stream
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet tail
  taskfleet tail --queue executor,agent --event job_dead,job_retry_scheduled
  taskfleet tail --kind ingest.connector --json
  taskfleet tail --since 48213        # after an earlier tail stopped at event 48213

A lost connection is resumed where it broke; on Ctrl-C the last event's id is printed.")]
pub struct TailArgs {
    /// Only these queues (comma-separated)
    #[arg(long)]
    queue: Option<String>,
    /// Only these job kinds (comma-separated)
    #[arg(long)]
    kind: Option<String>,
    /// Only these events (comma-separated), e.g. job_succeeded,job_dead
    #[arg(long)]
    event: Option<String>,
    /// Start after this event id instead of with what happens next
    #[arg(long, value_name = "EVENT_ID")]
    since: Option<i64>,
}

pub async fn run(api: &Api, args: TailArgs, json: bool) -> Result<ExitCode, Failure> {
    let query = [
        ("queue", args.queue),
        ("kind", args.kind),
        ("event", args.event),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| (name, v)))
    .collect();
    let mut stream = EventStream::new(
        api,
        Method::GET,
        "/v1/events".to_owned(),
        query,
        Ending::Never,
    )
    .after(args.since);
    let mut last = args.since;
    loop {
        let item = tokio::select! {
            item = stream.next() => item?,
            _ = tokio::signal::ctrl_c() => {
                if let Some(id) = last {
                    eprintln!("stopped after event {id}; `taskfleet tail --since {id}` goes on from there");
                }
                return Ok(ExitCode::SUCCESS);
            }
        };
        match item {
            None => return Ok(ExitCode::SUCCESS),
            Some(Item::Reconnecting(why)) => {
                eprintln!(
                    "{}",
                    console::style(format!("… connection lost: {why}")).dim()
                );
            }
            Some(Item::Event(message)) => {
                last = message.id.or(last);
                if json {
                    print_json(&message.data);
                    continue;
                }
                let data = &message.data;
                let kind = match data["kind"].as_str() {
                    Some(kind) => kind.to_owned(),
                    None => render::text(&data["queue"]),
                };
                println!(
                    "{}  {:<22} {:<36}  {:<18} {:<16} {}",
                    console::style(render::clock(&data["ts"])).dim(),
                    render::event(&message.event),
                    render::text(&data["job_id"]),
                    kind,
                    render::text(&data["actor"]),
                    render::details(&message.event, &data["details"])
                );
            }
        }
    }
}
