//! `taskfleet connectors`: the tenant's connected accounts, their syncs and their live tests,
//! `test-all` with a spinner per connector turning into its result as it lands.

use std::{collections::HashMap, io::IsTerminal, process::ExitCode, time::Duration};

use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    api::Api,
    fail::{Failure, exit},
    jobs, print_json, render,
    sse::{Ending, EventStream, Item},
    table::Table,
};

/// Connected accounts (GitHub, Jira, Confluence, Gmail, Google Drive)
#[derive(Subcommand, Debug)]
pub enum ConnectorsCommand {
    /// List the connectors with their status and last test
    #[command(
        after_help = "Examples:\n  taskfleet connectors list\n  taskfleet connectors list --json | jq -r 'select(.status != \"connected\") | .name'"
    )]
    List,
    /// Check one connector's credentials with the provider, now
    #[command(
        after_help = "Examples:\n  taskfleet connectors test 0193…\n\nExits 1 when the provider refuses the credentials."
    )]
    Test {
        #[arg(value_parser = crate::api::id)]
        id: String,
    },
    /// Test every connector at once, each result shown as it lands
    #[command(
        after_help = "Examples:\n  taskfleet connectors test-all\n  taskfleet connectors test-all --json\n\nExits 1 when any connector fails its test."
    )]
    TestAll,
    /// Fetch a connector's new items now (an ingest job)
    #[command(
        after_help = "Examples:\n  taskfleet connectors sync 0193…\n  taskfleet connectors sync 0193… --json | jq -r .id"
    )]
    Sync {
        #[arg(value_parser = crate::api::id)]
        id: String,
    },
}

pub async fn run(api: &Api, command: ConnectorsCommand, json: bool) -> Result<ExitCode, Failure> {
    match command {
        ConnectorsCommand::List => list(api, json).await,
        ConnectorsCommand::Test { id } => test(api, &id, json).await,
        ConnectorsCommand::TestAll => test_all(api, json).await,
        ConnectorsCommand::Sync { id } => {
            let job = api
                .post(&format!("/v1/connectors/{id}/sync"), &json!({}))
                .await?;
            if json {
                print_json(&job);
            } else {
                println!("{}", render::text(&job["id"]));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connectors(api: &Api) -> Result<Vec<Value>, Failure> {
    let list = api.get("/v1/connectors", &[]).await?;
    Ok(list["connectors"].as_array().cloned().unwrap_or_default())
}

async fn list(api: &Api, json: bool) -> Result<ExitCode, Failure> {
    let connectors = connectors(api).await?;
    if json {
        connectors.iter().for_each(print_json);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        "ID",
        "PROVIDER",
        "NAME",
        "STATUS",
        "ITEMS",
        "LAST SYNC",
        "LAST TEST",
    ]);
    for connector in &connectors {
        let status = render::text(&connector["status"]);
        let status = match status.as_str() {
            "connected" => console::style(status).green().to_string(),
            "pending_auth" => console::style(status).yellow().to_string(),
            _ => console::style(status).red().to_string(),
        };
        let test = &connector["last_test"];
        let last_test = if test.is_null() {
            String::new()
        } else {
            format!(
                "{} {}",
                mark(test["ok"] == true),
                render::text(&test["message"])
            )
        };
        table.row(vec![
            render::text(&connector["id"]),
            render::text(&connector["provider"]),
            render::text(&connector["name"]),
            status,
            render::text(&connector["item_count"]),
            render::relative(&connector["last_sync_at"]),
            last_test,
        ]);
    }
    if table.is_empty() {
        eprintln!("no connectors yet: connect one on the dashboard or with POST /v1/connectors");
    } else {
        table.print();
    }
    Ok(ExitCode::SUCCESS)
}

async fn test(api: &Api, id: &str, json: bool) -> Result<ExitCode, Failure> {
    let connector = api.get(&format!("/v1/connectors/{id}"), &[]).await?;
    let spinner = ticking(spinner(&format!(
        "{} {}: testing…",
        connector["provider"].as_str().unwrap_or(""),
        render::text(&connector["name"])
    )));
    let job = api
        .post(&format!("/v1/connectors/{id}/test"), &json!({}))
        .await?;
    let job = jobs::finished(api, &render::text(&job["id"])).await;
    spinner.finish_and_clear();
    let job = job?;
    if json {
        print_json(&job);
    }
    let result = &job["result"];
    let ok = job["state"] == "succeeded" && result["ok"] == true;
    if !json {
        let said = if job["state"] == "succeeded" {
            render::text(&result["message"])
        } else {
            render::text(&job["error"])
        };
        println!(
            "{} {} {}: {said}",
            mark(ok),
            render::text(&connector["provider"]),
            render::text(&connector["name"])
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::JOB_FAILED)
    })
}

async fn test_all(api: &Api, json: bool) -> Result<ExitCode, Failure> {
    let names: HashMap<String, String> = connectors(api)
        .await?
        .iter()
        .map(|c| (render::text(&c["id"]), render::text(&c["name"])))
        .collect();
    let mut stream = EventStream::new(
        api,
        Method::POST,
        "/v1/connectors/test-all".to_owned(),
        Vec::new(),
        Ending::WhenClosed,
    );
    let bars = MultiProgress::new();
    let stdout_is_terminal = std::io::stdout().is_terminal();
    let mut spinners: HashMap<String, ProgressBar> = HashMap::new();
    let mut failed = 0;
    let mut finished = false;
    while let Some(item) = stream.next().await? {
        let Item::Event(message) = item else { continue };
        let data = &message.data;
        if json {
            print_json(data);
        }
        let connector = render::text(&data["connector_id"]);
        let label = format!(
            "{} {}",
            render::text(&data["provider"]),
            names
                .get(&connector)
                .map(String::as_str)
                .unwrap_or(&connector)
        );
        match message.event.as_str() {
            "connecting" => {
                let spinner = ticking(bars.add(spinner(&format!("{label}: testing…"))));
                spinners.insert(connector, spinner);
            }
            "ok" | "error" => {
                let ok = message.event == "ok";
                failed += usize::from(!ok);
                let said = format!("{} {label}: {}", mark(ok), render::text(&data["message"]));
                // The spinner turns into the result where both are on one screen; otherwise
                // the result goes to standard output, where a script reads it.
                let spinner = spinners.remove(&connector);
                match spinner {
                    Some(spinner) if !spinner.is_hidden() && stdout_is_terminal => {
                        spinner.finish_with_message(said)
                    }
                    Some(spinner) => {
                        spinner.finish_and_clear();
                        if !json {
                            bars.suspend(|| println!("{said}"));
                        }
                    }
                    None if !json => bars.suspend(|| println!("{said}")),
                    None => {}
                }
            }
            "done" => finished = true,
            _ => {}
        }
        if message.event == "done" && !json {
            bars.suspend(|| {
                println!(
                    "{} passed, {} failed",
                    render::text(&data["ok"]),
                    render::text(&data["error"])
                )
            });
        }
    }
    // A stream that ended before `done` leaves connectors untested: each is a failure.
    if !finished {
        for spinner in spinners.into_values() {
            spinner.abandon_with_message(format!(
                "{} no result: the test stream ended early",
                mark(false)
            ));
        }
        eprintln!("the test stream ended before every connector had its result");
        failed += 1;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::JOB_FAILED)
    })
}

/// A spinner showing `message`, not yet turning (it draws once it ticks, so a spinner to
/// be added to several is added first).
fn spinner(message: &str) -> ProgressBar {
    ProgressBar::new_spinner()
        .with_style(
            ProgressStyle::with_template("{spinner:.cyan} {wide_msg}")
                .expect("the template parses"),
        )
        .with_message(message.to_owned())
}

fn ticking(spinner: ProgressBar) -> ProgressBar {
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

fn mark(ok: bool) -> String {
    if ok {
        console::style("✓").green().bold().to_string()
    } else {
        console::style("✗").red().bold().to_string()
    }
}
