use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use taskfleet_api::cli::{ApiArgs, Command, KeysCommand};
use taskfleet_storage::{Actor, Connectors, Db, LlmProviders, Role, Tenants, shown_key};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ApiArgs::parse();
    taskfleet_telemetry::logs::init(args.log_json);
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
            command:
                KeysCommand::Create {
                    tenant,
                    scope,
                    operator,
                    expires_in,
                },
        } => {
            let role = match operator {
                true => Role::Operator,
                false => scope.role(),
            };
            let db = Db::connect_lazy(&args.database_url, 2)?;
            db.migrate().await.context("migrations failed")?;
            let (tenant, key) = Tenants::new(db.pool)
                .create_key(&tenant, role, expires_in, &command_line())
                .await?;
            let until = match expires_in {
                Some(lifetime) => format!(
                    ", valid until {}",
                    (chrono::Utc::now() + lifetime).format("%Y-%m-%d %H:%M UTC")
                ),
                None => String::new(),
            };
            eprintln!(
                "created a {} API key for tenant {} ({}){until}",
                role.as_str(),
                tenant.name,
                tenant.id
            );
            println!("{key}");
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::List { tenant },
        } => {
            let db = Db::connect_lazy(&args.database_url, 2)?;
            db.migrate().await.context("migrations failed")?;
            let keys = Tenants::new(db.pool).list_keys(tenant.as_deref()).await?;
            let when = |at: Option<chrono::DateTime<chrono::Utc>>| {
                at.map_or("-".to_owned(), |at| at.format("%Y-%m-%d %H:%M").to_string())
            };
            println!(
                "{:<14} {:<20} {:<9} {:<16} {:<16} {:<16} {:<16}",
                "KEY", "TENANT", "SCOPE", "CREATED", "LAST USED", "EXPIRES", "REVOKED"
            );
            for key in keys {
                println!(
                    "{:<14} {:<20} {:<9} {:<16} {:<16} {:<16} {:<16}",
                    shown_key(&key.prefix),
                    key.tenant,
                    match key.role {
                        Role::Tenant => "submit",
                        other => other.as_str(),
                    },
                    when(Some(key.created_at)),
                    when(key.last_used_at),
                    when(key.expires_at),
                    when(key.revoked_at)
                );
            }
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Revoke { key },
        } => {
            let db = Db::connect_lazy(&args.database_url, 2)?;
            db.migrate().await.context("migrations failed")?;
            let (shown, tenant) = Tenants::new(db.pool)
                .revoke_key(&key, &command_line())
                .await?;
            eprintln!(
                "revoked the API key {shown}… of tenant {tenant}; API processes refuse it \
                 within their TASKFLEET_API_KEY_CACHE_SECS"
            );
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Reseal,
        } => {
            let sealer = args.encryption.sealer()?;
            let db = Db::connect_lazy(&args.database_url, 2)?;
            db.migrate().await.context("migrations failed")?;
            let resealed = Connectors::new(db.pool.clone()).reseal(&sealer).await?;
            let llm_keys = LlmProviders::new(db.pool).reseal(&sealer).await?;
            eprintln!(
                "sealed {resealed} connectors' credentials anew under key {}; the others were \
                 under it already",
                sealer.current_key_id()
            );
            eprintln!(
                "sealed {llm_keys} tenants' LLM API keys anew under key {}; the others were \
                 under it already",
                sealer.current_key_id()
            );
            Ok(())
        }
    }
}

/// Who runs an admin command, for the audit log: the OS user, as the shell says.
fn command_line() -> Actor {
    Actor::command_line(std::env::var("USER").ok().as_deref())
}
