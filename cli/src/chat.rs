//! `taskfleet chat`: a prompt for the to-do agent, its replies printed as they are written
//! (the job's progress events carry each new piece of text).

use std::{
    io::{BufRead, IsTerminal, Write},
    process::ExitCode,
};

use clap::Args;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    api::Api,
    fail::{Failure, exit},
    print_json, render,
    sse::{EventStream, Item},
};

/// Talk to the to-do agent, which reads and changes your tasks with its tools
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet chat                                  # a prompt; an empty line or Ctrl-D ends it
  taskfleet chat \"what should I do first today?\"
  taskfleet chat --conversation 0193… \"and after that?\"
  echo \"add a task: renew the TLS certificate\" | taskfleet chat --json

An LLM must be configured for the fleet or the tenant (the dashboard's LLM page).")]
pub struct ChatArgs {
    /// One message to send (without it, a prompt reads messages one line at a time)
    message: Option<String>,
    /// Go on with an earlier conversation
    #[arg(long)]
    conversation: Option<String>,
}

pub async fn run(api: &Api, args: ChatArgs, json: bool) -> Result<ExitCode, Failure> {
    let mut conversation = args.conversation;
    if let Some(message) = args.message {
        return say(api, &message, &mut conversation, json).await;
    }
    let stdin = std::io::stdin();
    let prompt = stdin.is_terminal();
    let mut code = ExitCode::SUCCESS;
    loop {
        if prompt {
            print!("{} ", console::style("you ›").cyan().bold());
            let _ = std::io::stdout().flush();
        }
        let mut line = String::new();
        let read = stdin
            .lock()
            .read_line(&mut line)
            .map_err(|err| Failure::local("reading the prompt", err))?;
        let message = line.trim();
        if read == 0 || (prompt && message.is_empty()) {
            return Ok(code);
        }
        if message.is_empty() {
            continue;
        }
        code = say(api, message, &mut conversation, json).await?;
    }
}

/// Sends one message and prints the reply as it streams; the conversation it belongs to is
/// kept for the next.
async fn say(
    api: &Api,
    message: &str,
    conversation: &mut Option<String>,
    json: bool,
) -> Result<ExitCode, Failure> {
    let mut body = json!({"message": message});
    if let Some(id) = conversation.as_deref() {
        body["conversation_id"] = json!(id);
    }
    // Answered at once with the job that writes the reply; the reply is read as it streams.
    let request = api
        .request(Method::POST, "/v1/chat")
        .query(&[("wait", "0")])
        .json(&body);
    let accepted = api.send(request).await?;
    *conversation = accepted["conversation_id"].as_str().map(str::to_owned);
    let job_id = render::text(&accepted["job_id"]);
    let mut written = String::new();
    if !json {
        print!("{} ", console::style("agent ›").green().bold());
        let _ = std::io::stdout().flush();
    }
    let mut stream = EventStream::of_job(api, &job_id, Some("job_started,job_progress"));
    while let Some(item) = stream.next().await? {
        let Item::Event(event) = item else { continue };
        // A retried attempt writes its reply again from the start.
        if event.event == "job_started" && event.data["details"]["attempt"].as_i64() > Some(1) {
            if !json && !written.is_empty() {
                println!(
                    "{}",
                    console::style(" (interrupted; the agent starts again)").dim()
                );
                print!("{} ", console::style("agent ›").green().bold());
            }
            written.clear();
        }
        if event.event == "job_progress" && !json {
            let piece = render::text(&event.data["details"]["message"]);
            print!("{piece}");
            let _ = std::io::stdout().flush();
            written.push_str(&piece);
        }
    }
    let job = api.get(&format!("/v1/jobs/{job_id}"), &[]).await?;
    let result = &job["result"];
    if json {
        print_json(if job["state"] == "succeeded" {
            result
        } else {
            &job
        });
    } else if job["state"] == "succeeded" {
        // The reply is whole in the result; the pieces are written as they come and may miss
        // some (progress is reported on a best-effort basis), or be none at all.
        let response = render::text(&result["response"]);
        if written.is_empty() {
            print!("{response}");
        } else if written != response {
            println!();
            println!(
                "{}",
                console::style("(part of the reply was missed on the way; in full:)").dim()
            );
            print!("{response}");
        }
        println!();
        let tools = tools_used(result);
        if !tools.is_empty() {
            println!("{}", console::style(format!("  (used {tools})")).dim());
        }
    } else {
        println!();
        eprintln!(
            "{} {}",
            console::style("the agent failed:").red().bold(),
            render::text(&job["error"])
        );
    }
    Ok(if job["state"] == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::JOB_FAILED)
    })
}

fn tools_used(result: &Value) -> String {
    let names: Vec<String> = result["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|call| render::text(&call["name"]))
        .collect();
    names.join(", ")
}
