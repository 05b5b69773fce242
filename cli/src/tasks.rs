//! `taskfleet tasks`: the focus lists, three things for today, this week and this month.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::{api::Api, fail::Failure, print_json, render};

/// Show the focus lists: the top tasks for today, this week and this month
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet tasks
  taskfleet tasks today
  taskfleet tasks week --limit 10
  taskfleet tasks today --json | jq -r .title")]
pub struct TasksArgs {
    /// One horizon only
    horizon: Option<Horizon>,
    /// How many per horizon
    #[arg(long, default_value_t = 3)]
    limit: u32,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Horizon {
    Today,
    Week,
    Month,
}

impl Horizon {
    fn name(self) -> &'static str {
        match self {
            Horizon::Today => "today",
            Horizon::Week => "week",
            Horizon::Month => "month",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Horizon::Today => "Today",
            Horizon::Week => "This week",
            Horizon::Month => "This month",
        }
    }
}

pub async fn run(api: &Api, args: TasksArgs, json: bool) -> Result<ExitCode, Failure> {
    let horizons = match args.horizon {
        Some(horizon) => vec![horizon],
        None => vec![Horizon::Today, Horizon::Week, Horizon::Month],
    };
    for (index, horizon) in horizons.into_iter().enumerate() {
        let query = [
            ("horizon", horizon.name().to_owned()),
            ("limit", args.limit.to_string()),
        ];
        let page = api.get("/v1/tasks", &query).await?;
        let tasks = page["tasks"].as_array().cloned().unwrap_or_default();
        if json {
            tasks.iter().for_each(print_json);
            continue;
        }
        if index > 0 {
            println!();
        }
        println!("{}", console::style(horizon.heading()).bold());
        if tasks.is_empty() {
            println!("  {}", console::style("nothing here").dim());
        }
        for (rank, task) in tasks.iter().enumerate() {
            println!("  {}. {}", rank + 1, render::text(&task["title"]));
            let about = about(task);
            if !about.is_empty() {
                println!("     {}", console::style(about).dim());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a task comes from, when it is due and why it ranks where it does, in one line.
fn about(task: &Value) -> String {
    let mut parts = vec![render::text(&task["source_kind"])];
    if !task["due_at"].is_null() {
        parts.push(format!("due {}", render::relative(&task["due_at"])));
    }
    if let Some(reason) = task["reason"].as_str().filter(|r| !r.is_empty()) {
        parts.push(reason.to_owned());
    }
    if let Some(url) = task["url"].as_str() {
        parts.push(url.to_owned());
    }
    parts.join(" · ")
}
