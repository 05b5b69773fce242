//! `taskfleet`: a fleet from a terminal. It submits jobs and follows them with a progress
//! bar, lists and operates jobs, schedules, connectors and queues, tails the live event
//! stream, and watches the fleet like `htop`, all through the REST API and nothing else.

mod api;
mod chat;
mod config;
mod connectors;
mod fail;
mod jobs;
mod login;
mod render;
mod schedules;
mod screen;
mod sse;
mod submit;
mod table;
mod tail;
mod tasks;
mod top;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::{api::Api, fail::Failure};

const EXIT_CODES: &str = "\
Exit codes:
  0    done (a waited-for job succeeded)
  1    the waited-for job failed, a connector test failed, or the chat agent did
  2    the command line, the configuration or a file it names is wrong
  3    the waited-for job was cancelled
  4    the API refused the request (its message says why)
  5    the API did not answer
  130  Ctrl-C while waiting for a job (the job goes on)

Configuration: a profile named with --profile (or TASKFLEET_PROFILE), which --url and
--key may change; else --url and --key, else TASKFLEET_URL and TASKFLEET_KEY, else the
default profile `taskfleet login` wrote. A profile's key goes to its own address only.

Examples:
  taskfleet login --url http://127.0.0.1:8080
  taskfleet submit executor.run --tool sleep --arg ms=3000 --wait
  taskfleet jobs --state dead
  taskfleet tail --queue executor
  taskfleet top";

#[derive(Parser, Debug)]
#[command(name = "taskfleet", version, about = "Submit, watch and operate a taskfleet fleet through its REST API.", after_help = EXIT_CODES)]
struct Cli {
    /// The API's address [env: TASKFLEET_URL; default: the profile's, else
    /// http://127.0.0.1:8080]
    #[arg(long, global = true)]
    url: Option<String>,
    /// The API key (tfk_…) or a bearer token [env: TASKFLEET_KEY]
    #[arg(long, global = true)]
    key: Option<String>,
    /// The profile to use, from `taskfleet login --profile` [env: TASKFLEET_PROFILE]
    #[arg(long, global = true)]
    profile: Option<String>,
    /// Print the API's JSON (one object per line for streams), for scripts
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Submit(submit::SubmitArgs),
    Jobs(jobs::ListArgs),
    Job(jobs::ShowArgs),
    Cancel(jobs::IdArgs),
    Retry(jobs::IdArgs),
    Tail(tail::TailArgs),
    Top(top::TopArgs),
    Queues(top::QueuesArgs),
    Workers(top::WorkersArgs),
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    #[command(subcommand)]
    Connectors(connectors::ConnectorsCommand),
    Tasks(tasks::TasksArgs),
    Chat(chat::ChatArgs),
    Login(login::LoginArgs),
    /// Print a completion script for a shell
    #[command(
        after_help = "Examples:\n  taskfleet completions bash > ~/.local/share/bash-completion/completions/taskfleet\n  taskfleet completions zsh > \"${fpath[1]}/_taskfleet\"\n  taskfleet completions fish > ~/.config/fish/completions/taskfleet.fish"
    )]
    Completions {
        shell: Shell,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // A closed pipe (`taskfleet jobs | head`) ends the program quietly, as it does any
    // Unix tool, instead of failing the next write.
    // SAFETY: only the disposition changes, back to the default; no handler is installed.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("{} {failure}", console::style("error:").red().bold());
            failure.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    let json = cli.json;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "taskfleet",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Login(args) => return login::run(cli.url, cli.key, cli.profile, args, json).await,
        _ => {}
    }
    let api = Api::new(config::resolve(config::Given {
        url: cli.url,
        key: cli.key,
        profile: cli.profile,
    })?);
    match cli.command {
        Command::Submit(args) => submit::run(&api, args, json).await,
        Command::Jobs(args) => jobs::list(&api, args, json).await,
        Command::Job(args) => jobs::show(&api, args, json).await,
        Command::Cancel(args) => jobs::cancel(&api, args, json).await,
        Command::Retry(args) => jobs::retry(&api, args, json).await,
        Command::Tail(args) => tail::run(&api, args, json).await,
        Command::Top(args) => top::run(&api, args, json).await,
        Command::Queues(args) => top::queues(&api, args, json).await,
        Command::Workers(args) => top::workers(&api, args, json).await,
        Command::Schedules(command) => schedules::run(&api, command, json).await,
        Command::Connectors(command) => connectors::run(&api, command, json).await,
        Command::Tasks(args) => tasks::run(&api, args, json).await,
        Command::Chat(args) => chat::run(&api, args, json).await,
        Command::Login(_) | Command::Completions { .. } => unreachable!("handled above"),
    }
}

/// Prints a JSON value for scripts: compact, one per line.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_documents_itself_with_examples() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        fn check(command: &clap::Command, path: &str) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if sub.get_subcommands().next().is_none() {
                    assert!(
                        help.contains("Examples:"),
                        "`{path} --help` has no examples"
                    );
                    assert!(sub.get_about().is_some(), "`{path}` has no description");
                }
                check(sub, &path);
            }
        }
        check(&cli, "taskfleet");
    }
}
