//! `taskfleet schedules`: cron schedules and one-off instants that create jobs.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::{
    api::Api,
    fail::Failure,
    print_json, render,
    submit::{JobTarget, instant, payload},
    table::Table,
};

/// Schedules that create jobs on a cron or at one instant
#[derive(Subcommand, Debug)]
pub enum SchedulesCommand {
    /// List the schedules with their next firing
    #[command(
        after_help = "Examples:\n  taskfleet schedules list\n  taskfleet schedules list --json | jq -r .name"
    )]
    List,
    /// Show a schedule and its last firings
    #[command(after_help = "Examples:\n  taskfleet schedules show 0193…")]
    Show {
        #[arg(value_parser = crate::api::id)]
        id: String,
    },
    /// Create a schedule (the job is given as to `submit`)
    #[command(after_help = "Examples:
  taskfleet schedules create --name nightly-rank --cron '0 0 6 * * *' --time-zone Europe/Paris agent.prioritise
  taskfleet schedules create --name sync-github --cron '0 */15 * * * *' ingest.connector --arg connector_id=0193…
  taskfleet schedules create --name release-notes --at 2026-12-24T09:00:00Z executor.run --tool changelog.generate --input @commits.txt

Cron expressions have six or seven fields, seconds first.")]
    Create(Box<CreateArgs>),
    /// Delete a schedule (jobs it already created stay)
    #[command(after_help = "Examples:\n  taskfleet schedules delete 0193…")]
    Delete {
        #[arg(value_parser = crate::api::id)]
        id: String,
    },
    /// Stop a schedule firing until it is resumed
    #[command(after_help = "Examples:\n  taskfleet schedules pause 0193…")]
    Pause {
        #[arg(value_parser = crate::api::id)]
        id: String,
    },
    /// Let a paused schedule fire again
    #[command(after_help = "Examples:\n  taskfleet schedules resume 0193…")]
    Resume {
        #[arg(value_parser = crate::api::id)]
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// A name unique among the tenant's schedules
    #[arg(long)]
    name: String,
    /// A cron expression with seconds first, e.g. '0 */5 * * * *'
    #[arg(long, conflicts_with = "at", required_unless_present = "at")]
    cron: Option<String>,
    /// The IANA time zone the cron is read in (default UTC)
    #[arg(long, requires = "cron")]
    time_zone: Option<String>,
    /// Fire once, at this RFC 3339 time or after this delay (10m, 2h)
    #[arg(long, value_name = "TIME|DELAY")]
    at: Option<String>,
    /// What to do about slots missed while the fleet was down: skip or catch_up_once
    #[arg(long)]
    missed: Option<String>,
    #[command(flatten)]
    target: JobTarget,
}

pub async fn run(api: &Api, command: SchedulesCommand, json: bool) -> Result<ExitCode, Failure> {
    match command {
        SchedulesCommand::List => {
            let schedules = api
                .collect("/v1/schedules", "schedules", &[], usize::MAX)
                .await?;
            if json {
                schedules.iter().for_each(print_json);
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&["ID", "NAME", "WHEN", "TARGET", "STATE", "NEXT"]);
            for schedule in &schedules {
                table.row(vec![
                    render::text(&schedule["id"]),
                    render::text(&schedule["name"]),
                    when(schedule),
                    target(&schedule["target"]),
                    paused(schedule),
                    render::relative(&schedule["next_fire_at"]),
                ]);
            }
            if table.is_empty() {
                eprintln!("no schedules yet: `taskfleet schedules create --help` shows how");
            } else {
                table.print();
            }
        }
        SchedulesCommand::Show { id } => {
            let schedule = api.get(&format!("/v1/schedules/{id}"), &[]).await?;
            if json {
                print_json(&schedule);
                return Ok(ExitCode::SUCCESS);
            }
            describe(&schedule);
            let mut table = Table::new(&["SLOT", "FIRED", "JOB", "CATCH-UP"]);
            for firing in schedule["last_firings"].as_array().into_iter().flatten() {
                table.row(vec![
                    render::when(&firing["fire_at"]),
                    render::relative(&firing["fired_at"]),
                    render::text(&firing["job_id"]),
                    if firing["catch_up"] == true {
                        "yes".into()
                    } else {
                        String::new()
                    },
                ]);
            }
            if !table.is_empty() {
                println!();
                table.print();
            }
        }
        SchedulesCommand::Create(args) => {
            let mut body = json!({"name": args.name, "target": payload(api, &args.target).await?});
            if let Some(cron) = args.cron {
                body["cron"] = json!(cron);
            }
            if let Some(zone) = args.time_zone {
                body["time_zone"] = json!(zone);
            }
            if let Some(at) = args.at {
                body["at"] = json!(instant(&at, chrono::Utc::now())?.to_rfc3339());
            }
            if let Some(missed) = args.missed {
                body["missed"] = json!(missed);
            }
            let schedule = api.post("/v1/schedules", &body).await?;
            if json {
                print_json(&schedule);
            } else {
                describe(&schedule);
            }
        }
        SchedulesCommand::Delete { id } => {
            api.delete(&format!("/v1/schedules/{id}")).await?;
            if json {
                print_json(&json!({"deleted": id}));
            } else {
                println!("schedule {id} deleted");
            }
        }
        SchedulesCommand::Pause { id } => switch(api, &id, "pause", json).await?,
        SchedulesCommand::Resume { id } => switch(api, &id, "resume", json).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn switch(api: &Api, id: &str, verb: &str, json: bool) -> Result<(), Failure> {
    let schedule = api
        .post(&format!("/v1/schedules/{id}/{verb}"), &json!({}))
        .await?;
    if json {
        print_json(&schedule);
    } else {
        describe(&schedule);
    }
    Ok(())
}

fn describe(schedule: &Value) {
    println!(
        "{} {}  {}  {}",
        console::style("schedule").bold(),
        render::text(&schedule["name"]),
        render::text(&schedule["id"]),
        paused(schedule)
    );
    println!("  {:<10}{}", console::style("when").dim(), when(schedule));
    println!(
        "  {:<10}{}",
        console::style("creates").dim(),
        target(&schedule["target"])
    );
    println!(
        "  {:<10}{}",
        console::style("missed").dim(),
        render::text(&schedule["missed"])
    );
    println!(
        "  {:<10}{}",
        console::style("next").dim(),
        render::when(&schedule["next_fire_at"])
    );
}

fn when(schedule: &Value) -> String {
    match schedule["cron"].as_str() {
        Some(cron) => format!(
            "{cron} ({})",
            schedule["time_zone"].as_str().unwrap_or("UTC")
        ),
        None => format!("at {}", render::text(&schedule["at"])),
    }
}

fn target(target: &Value) -> String {
    match target["tool"].as_str() {
        Some(tool) => format!("{} {tool}", render::text(&target["kind"])),
        None => render::text(&target["kind"]),
    }
}

fn paused(schedule: &Value) -> String {
    if schedule["paused"] == true {
        console::style("paused").yellow().to_string()
    } else {
        console::style("active").green().to_string()
    }
}
