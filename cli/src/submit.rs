//! `taskfleet submit`: a job from the command line, and with `--wait` a progress bar fed by
//! the job's event stream until it ends, then its result or its error and an exit code that
//! says which.

use std::{io::Read, process::ExitCode, time::Duration};

use chrono::{DateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::{
    api::Api,
    fail::{Failure, exit},
    print_json, render,
    sse::{EventStream, Item},
};

/// The job a command creates: its kind and fields.
#[derive(Args, Debug)]
pub struct JobTarget {
    /// The job kind: executor.run, ingest.connector, embed.items, agent.prioritise, agent.chat
    /// or test.connector
    pub kind: String,
    /// The tool executor.run runs: noop, sleep, markdown.format, changelog.generate, or a
    /// command the operator allowed
    #[arg(long)]
    pub tool: Option<String>,
    /// The tool's input: text, @FILE for a file's contents, or - for standard input
    #[arg(long, value_name = "TEXT|@FILE|-")]
    pub input: Option<String>,
    /// K=V (V read as JSON when it parses as JSON, else as text: quote a number meant as
    /// text, version='"1.2"'): for executor.run an entry of a built-in tool's `args`, for
    /// other kinds a field of the job (connector_id=…, message=…). For an allow-listed
    /// command, each --arg is a word of its argument list (--arg --select=E)
    #[arg(long = "arg", value_name = "K=V", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// A file for an allow-listed command to work on, sent as its name (or as NAME)
    #[arg(long = "file", value_name = "PATH[=NAME]")]
    pub files: Vec<String>,
    /// Higher runs first (-100 to 100)
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i16>,
    /// Attempts before the job is dead
    #[arg(long)]
    pub max_attempts: Option<u32>,
}

/// Submit a job; with --wait, follow it to its end
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet submit executor.run --tool sleep --arg ms=5000 --wait
  taskfleet submit executor.run --tool markdown.format --input @README.md --wait
  git log --oneline | taskfleet submit executor.run --tool changelog.generate --input - --arg version=1.2.0
  taskfleet submit executor.run --tool ruff.check --file app.py --wait
  taskfleet submit ingest.connector --arg connector_id=0193… --run-at 10m
  taskfleet submit agent.prioritise --idempotency-key nightly-2026-12-04

With --wait the exit code is 0 when the job succeeded, 1 when it failed, 3 when it was
cancelled; Ctrl-C stops waiting, not the job.")]
pub struct SubmitArgs {
    #[command(flatten)]
    pub target: JobTarget,
    /// When to start: an RFC 3339 time, or a delay (30s, 10m, 2h, 1d)
    #[arg(long, value_name = "TIME|DELAY")]
    pub run_at: Option<String>,
    /// A second submission with the same key gives back the first job instead of a new one
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job with a progress bar until it ends, then print its result
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(api: &Api, args: SubmitArgs, json: bool) -> Result<ExitCode, Failure> {
    let mut body = payload(api, &args.target).await?;
    if let Some(run_at) = &args.run_at {
        body["run_at"] = Value::String(instant(run_at, Utc::now())?.to_rfc3339());
    }
    let mut request = api.request(Method::POST, "/v1/jobs").json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let job = api.send(request).await?;
    if !args.wait {
        if json {
            print_json(&job);
        } else {
            println!("{}", render::text(&job["id"]));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        println!("{}", render::text(&job["id"]));
    }
    wait(api, &job, json).await
}

/// The JSON body of a job from its command-line form.
pub async fn payload(api: &Api, target: &JobTarget) -> Result<Value, Failure> {
    let command = match &target.tool {
        Some(tool) if !target.args.is_empty() => runs_a_command(api, tool).await?,
        _ => false,
    };
    body(target, command)
}

/// Whether executor tool `tool` is an allow-listed command, whose `args` are a list of
/// words, rather than a built-in, whose `args` are named; the API's list says.
async fn runs_a_command(api: &Api, tool: &str) -> Result<bool, Failure> {
    let tools = api.get("/v1/executor/tools", &[]).await?;
    Ok(tools["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["name"] == tool && t["kind"] == "command"))
}

/// The body, given whether the tool is a command (its `--arg`s are words, not `K=V`).
fn body(target: &JobTarget, command: bool) -> Result<Value, Failure> {
    let mut body = Map::new();
    body.insert("kind".into(), Value::String(target.kind.clone()));
    let executor = target.kind == "executor.run";
    if !executor && (target.tool.is_some() || target.input.is_some() || !target.files.is_empty()) {
        return Err(Failure::usage(format!(
            "--tool, --input and --file go with executor.run, not {}: give {}'s fields with --arg K=V",
            target.kind, target.kind
        )));
    }
    if let Some(tool) = &target.tool {
        body.insert("tool".into(), Value::String(tool.clone()));
    }
    if let Some(input) = &target.input {
        body.insert("input".into(), Value::String(read_input(input)?));
    }
    if !target.files.is_empty() {
        body.insert("files".into(), Value::Object(read_files(&target.files)?));
    }
    if command {
        body.insert("args".into(), json!(target.args));
    } else {
        let mut fields = Map::new();
        for arg in &target.args {
            let Some((name, value)) = arg.split_once('=').filter(|(name, _)| !name.is_empty())
            else {
                return Err(Failure::usage(format!(
                    "--arg {arg} is not K=V (plain words are for an allow-listed command's argument list)"
                )));
            };
            let value =
                serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
            fields.insert(name.to_owned(), value);
        }
        match executor {
            true if !fields.is_empty() => {
                body.insert("args".into(), Value::Object(fields));
            }
            true => {}
            false => body.extend(fields),
        }
    }
    if let Some(priority) = target.priority {
        body.insert("priority".into(), json!(priority));
    }
    if let Some(max_attempts) = target.max_attempts {
        body.insert("max_attempts".into(), json!(max_attempts));
    }
    Ok(Value::Object(body))
}

/// `--file PATH[=NAME]`s as the `files` object: each file's text under its name. A path
/// that exists is taken whole, `=` and all.
fn read_files(files: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut read = Map::new();
    for file in files {
        let (path, name) = match file.rsplit_once('=') {
            Some((path, name)) if !std::path::Path::new(file).exists() => (path, name.to_owned()),
            _ => (file.as_str(), file_name(file)),
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| Failure::local(&format!("reading {path}"), err))?;
        if read.insert(name.clone(), Value::String(text)).is_some() {
            return Err(Failure::usage(format!(
                "two files would be sent as {name}: give one of them another name with PATH=NAME"
            )));
        }
    }
    Ok(read)
}

/// The name a file is sent under: its own name, without its directories.
fn file_name(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_owned())
}

/// `--input`'s text: itself, a file's contents (`@FILE`) or standard input (`-`).
fn read_input(input: &str) -> Result<String, Failure> {
    if input == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|err| Failure::local("reading standard input", err))?;
        return Ok(text);
    }
    match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|err| Failure::local(&format!("reading {path}"), err)),
        None => Ok(input.to_owned()),
    }
}

/// An RFC 3339 time, or `now` plus a delay such as `90s`, `10m`, `2h` or `1d`.
pub fn instant(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Failure> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (count, unit) = text.split_at(unit_at);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => 0,
    };
    let later = count
        .parse::<i64>()
        .ok()
        .filter(|_| seconds > 0)
        .and_then(|count| count.checked_mul(seconds))
        .and_then(chrono::Duration::try_seconds)
        .and_then(|delay| now.checked_add_signed(delay));
    match later {
        Some(at) => Ok(at),
        None => Err(Failure::usage(format!(
            "'{text}' is neither an RFC 3339 time (2026-12-24T09:00:00Z) nor a delay (30s, 10m, 2h, 1d)"
        ))),
    }
}

/// Follows `job` to its end on its event stream, with a progress bar on a terminal, then
/// prints its result (or its error) and answers the exit code its end stands for.
pub async fn wait(api: &Api, job: &Value, json: bool) -> Result<ExitCode, Failure> {
    let id = render::text(&job["id"]);
    let bar = ProgressBar::new(100).with_style(
        ProgressStyle::with_template(
            "{spinner:.cyan} [{bar:30.cyan/blue}] {pos:>3}% {elapsed:>4} {wide_msg}",
        )
        .expect("the template parses")
        .progress_chars("█▉▊▋▌▍▎▏ "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(waiting_message(api, job).await);
    let mut events = EventStream::of_job(api, &id, None);
    loop {
        let item = tokio::select! {
            item = events.next() => item,
            _ = tokio::signal::ctrl_c() => {
                bar.abandon_with_message("stopped waiting");
                eprintln!("job {id} goes on; see it with `taskfleet job {id}`");
                return Ok(ExitCode::from(exit::INTERRUPTED));
            }
        };
        match item {
            Err(failure) => {
                bar.abandon();
                return Err(failure);
            }
            Ok(None) => break,
            Ok(Some(Item::Reconnecting(why))) => bar.set_message(format!("connection lost: {why}")),
            Ok(Some(Item::Event(message))) => {
                let details = &message.data["details"];
                match message.event.as_str() {
                    "job_started" => bar.set_message(format!(
                        "running (attempt {}) on {}",
                        render::text(&details["attempt"]),
                        render::text(&message.data["actor"])
                    )),
                    "job_progress" => {
                        if let Some(percent) = details["percent"].as_f64() {
                            bar.set_position(percent.clamp(0.0, 100.0) as u64);
                        }
                        bar.set_message(
                            render::first_line(&render::text(&details["message"])).to_owned(),
                        );
                    }
                    "job_failed"
                    | "job_retry_scheduled"
                    | "lease_reclaimed"
                    | "job_cancel_requested" => {
                        bar.set_message(format!(
                            "{}: {}",
                            message.event.trim_start_matches("job_").replace('_', " "),
                            render::details(&message.event, details)
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    let job = api.get(&format!("/v1/jobs/{id}"), &[]).await?;
    let state = render::text(&job["state"]);
    let code = match state.as_str() {
        "succeeded" => {
            bar.set_position(100);
            let took = ran_for(&job)
                .map(|s| format!(" in {}", render::seconds(s)))
                .unwrap_or_default();
            bar.finish_with_message(format!(
                "{}{took}",
                console::style("succeeded").green().bold()
            ));
            if !json {
                print_result(&job["result"]);
            }
            ExitCode::SUCCESS
        }
        "cancelled" => {
            if bar.is_hidden() && !json {
                eprintln!("job {id} was cancelled");
            }
            bar.abandon_with_message(console::style("cancelled").yellow().bold().to_string());
            ExitCode::from(exit::JOB_CANCELLED)
        }
        "dead" => {
            let error = render::text(&job["error"]);
            let said = format!(
                "{} after {} attempt(s): {error}",
                console::style("failed").red().bold(),
                render::text(&job["attempt"])
            );
            if bar.is_hidden() && !json {
                eprintln!("{said}");
            }
            bar.abandon_with_message(said);
            ExitCode::from(exit::JOB_FAILED)
        }
        other => {
            bar.abandon();
            return Err(Failure::Local(format!(
                "job {id}'s event stream ended while it is {other}; see `taskfleet job {id}`"
            )));
        }
    };
    if json {
        print_json(&job);
    }
    Ok(code)
}

/// What a job waits for before it starts: a paused queue, a later start, or a worker.
async fn waiting_message(api: &Api, job: &Value) -> String {
    let queue = render::text(&job["queue"]);
    let paused = api.get("/v1/queues", &[]).await.ok().is_some_and(|queues| {
        queues["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|q| q["name"] == queue.as_str() && q["paused"] == true)
    });
    if paused {
        format!("queue {queue} is paused: the job starts when it is resumed")
    } else if job["state"] == "scheduled" {
        format!("scheduled to start {}", render::relative(&job["run_at"]))
    } else {
        format!("queued on {queue}")
    }
}

fn ran_for(job: &Value) -> Option<f64> {
    let started = render::timestamp(&job["started_at"])?;
    let finished = render::timestamp(&job["finished_at"])?;
    Some((finished - started).num_milliseconds() as f64 / 1000.0)
}

/// A result as people read it: a tool's text as text, anything else as indented JSON.
fn print_result(result: &Value) {
    for field in ["markdown", "response", "stdout"] {
        if let Some(text) = result[field].as_str().filter(|t| !t.is_empty()) {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            return;
        }
    }
    if !result.is_null() {
        println!(
            "{}",
            serde_json::to_string_pretty(result).expect("JSON prints")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: &str, args: &[&str]) -> JobTarget {
        JobTarget {
            kind: kind.to_owned(),
            tool: (kind == "executor.run").then(|| "sleep".to_owned()),
            input: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            files: Vec::new(),
            priority: None,
            max_attempts: None,
        }
    }

    #[test]
    fn arguments_become_a_tools_args_or_a_jobs_fields() {
        let sleep = body(
            &target("executor.run", &["ms=250", "label=\"x\"", "note=hi"]),
            false,
        )
        .unwrap();
        assert_eq!(
            sleep,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 250, "label": "x", "note": "hi"}})
        );
        let command = body(
            &target("executor.run", &["check", "--select=E,F", "CC=gcc"]),
            true,
        )
        .unwrap();
        assert_eq!(command["args"], json!(["check", "--select=E,F", "CC=gcc"]));
        let ingest = body(&target("ingest.connector", &["connector_id=abc"]), false).unwrap();
        assert_eq!(
            ingest,
            json!({"kind": "ingest.connector", "connector_id": "abc"})
        );
        assert!(body(&target("executor.run", &["ms=1", "check"]), false).is_err());
        assert!(body(&target("ingest.connector", &["abc"]), false).is_err());
    }

    #[test]
    fn an_argument_may_start_with_a_dash() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            submit: SubmitArgs,
        }
        let cli = Cli::try_parse_from([
            "taskfleet",
            "executor.run",
            "--tool",
            "ruff.check",
            "--arg",
            "--select=E,F",
            "--arg",
            "-q",
        ])
        .unwrap();
        assert_eq!(cli.submit.target.args, ["--select=E,F", "-q"]);
    }

    #[test]
    fn files_are_sent_under_their_names() {
        let dir = std::env::temp_dir().join(format!("taskfleet-cli-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.py");
        std::fs::write(&file, "import os\n").unwrap();
        let mut ruff = target("executor.run", &[]);
        ruff.files = vec![
            file.display().to_string(),
            format!("{}=src/main.py", file.display()),
        ];
        let sent = body(&ruff, true).unwrap();
        assert_eq!(
            sent["files"],
            json!({"app.py": "import os\n", "src/main.py": "import os\n"})
        );
        ruff.files = vec![file.display().to_string(), file.display().to_string()];
        assert!(body(&ruff, true).is_err(), "two files under one name");
        ruff.files = vec![dir.join("missing.py").display().to_string()];
        assert!(body(&ruff, true).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_start_is_a_time_or_a_delay() {
        let now = Utc::now();
        assert_eq!(
            instant("10m", now).unwrap(),
            now + chrono::Duration::minutes(10)
        );
        assert_eq!(
            instant("2026-12-24T09:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-12-24T08:00:00+00:00"
        );
        assert!(instant("soon", now).is_err());
        assert!(instant("5w", now).is_err());
        assert!(instant("99999999999d", now).is_err());
    }
}
