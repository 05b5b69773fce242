use std::process::ExitCode;

use clap::Parser;
use taskfleet_worker::{cli::WorkerArgs, fleet};

#[tokio::main]
async fn main() -> ExitCode {
    let args = WorkerArgs::parse();
    taskfleet_telemetry::logs::init(args.log_json);
    match fleet::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
