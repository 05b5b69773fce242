//! `taskfleet login`: checks a key against the API, then keeps the address and the key as a
//! profile, in a file only its owner can read.

use std::{
    io::{BufRead, IsTerminal},
    process::ExitCode,
};

use clap::Args;
use serde_json::json;

use crate::{
    api::Api,
    config::{DEFAULT_PROFILE, DEFAULT_URL, Profile, ProfileFile, Target, env},
    fail::Failure,
    print_json, render,
};

/// Check an API key and keep it (and the API's address) as a profile
#[derive(Args, Debug)]
#[command(after_help = "Examples:
  taskfleet login                                   # asks for the key
  taskfleet login --url https://fleet.example.com --profile prod
  echo \"$KEY\" | taskfleet login --url http://127.0.0.1:8080
  taskfleet login --key \"$KEY\" --profile staging --url https://staging.example.com

The profile is written to ~/.config/taskfleet/config.toml (under $XDG_CONFIG_HOME when set;
the platform's config directory on macOS), mode 0600. Its key is sent to its address only.")]
pub struct LoginArgs {}

pub async fn run(
    url: Option<String>,
    key: Option<String>,
    profile: Option<String>,
    _args: LoginArgs,
    json: bool,
) -> Result<ExitCode, Failure> {
    // The key is typed or given with --key, never taken from TASKFLEET_KEY, which may be
    // another server's; the address is --url, else the profile's own, else TASKFLEET_URL.
    let name = profile
        .or_else(|| env("TASKFLEET_PROFILE"))
        .unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    let mut file = ProfileFile::load()?;
    let url = url
        .or_else(|| file.profiles.get(&name).map(|p| p.url.clone()))
        .or_else(|| env("TASKFLEET_URL"))
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
        .trim_end_matches('/')
        .to_owned();
    let key = match key {
        Some(key) => key,
        None => read_key()?,
    };
    if key.is_empty() {
        return Err(Failure::usage("no key given"));
    }
    let me = Api::new(Target {
        url: url.clone(),
        key: key.clone(),
    })
    .get("/v1/me", &[])
    .await?;
    file.profiles.insert(
        name.clone(),
        Profile {
            url: url.clone(),
            key,
        },
    );
    let path = file.save()?;
    if json {
        print_json(
            &json!({"profile": name, "path": path, "url": url, "tenant": me["tenant"], "role": me["role"]}),
        );
    } else {
        println!(
            "signed in to {url} as tenant {} ({} key); profile '{name}' saved in {}",
            render::text(&me["tenant"]),
            render::text(&me["role"]),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The key, asked for without echo on a terminal, or read as a line from standard input.
fn read_key() -> Result<String, Failure> {
    if std::io::stdin().is_terminal() {
        let term = console::Term::stderr();
        term.write_str("API key: ")
            .map_err(|err| Failure::local("asking for the key", err))?;
        return term
            .read_secure_line()
            .map(|key| key.trim().to_owned())
            .map_err(|err| Failure::local("reading the key", err));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| Failure::local("reading the key from standard input", err))?;
    Ok(line.trim().to_owned())
}
