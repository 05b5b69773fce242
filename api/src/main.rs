use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use taskfleet_api::cli::{ApiArgs, Command, KeysCommand};
use taskfleet_storage::{Db, Tenants};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ApiArgs::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        logs.json().init()
    } else {
        logs.init()
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ApiArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.database_url.is_empty(),
        "set DATABASE_URL (see .env.example)"
    );
    match args.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => taskfleet_api::serve(args).await,
        Command::Migrate => {
            let db = Db::connect_lazy(&args.database_url, 2)?;
            db.migrate().await.context("migrations failed")?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Create { tenant },
        } => {
            let db = Db::connect_lazy(&args.database_url, 2)?;
            db.migrate().await.context("migrations failed")?;
            let (tenant, key) = Tenants::new(db.pool).create_key(&tenant).await?;
            eprintln!(
                "created an API key for tenant {} ({})",
                tenant.name, tenant.id
            );
            println!("{key}");
            Ok(())
        }
    }
}
