//! What can go wrong, said in plain words, and the exit code that tells a script which.

use std::{fmt, process::ExitCode};

/// The exit codes, as `taskfleet --help` lists them.
pub mod exit {
    /// The waited-for job failed (dead), a connector test failed, or the chat agent did.
    pub const JOB_FAILED: u8 = 1;
    /// The command line, its configuration or a file it names is wrong (clap uses 2 for
    /// usage errors too).
    pub const USAGE: u8 = 2;
    /// The waited-for job was cancelled.
    pub const JOB_CANCELLED: u8 = 3;
    /// The API answered with an error.
    pub const API: u8 = 4;
    /// The API did not answer.
    pub const UNREACHABLE: u8 = 5;
    /// Interrupted (Ctrl-C) while waiting; the job itself goes on.
    pub const INTERRUPTED: u8 = 130;
}

/// A command that could not do what it was asked.
#[derive(Debug)]
pub enum Failure {
    /// The API answered `status` with its `{error, message}` body.
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// No answer from `url`: refused, timed out, reset.
    Unreachable { url: String, why: String },
    /// The command line or the configuration is wrong.
    Usage(String),
    /// A local file or the terminal could not be read or written, or a stream ended in a
    /// way it should not have.
    Local(String),
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::Usage(message.into())
    }

    pub fn local(what: &str, err: impl fmt::Display) -> Failure {
        Failure::Local(format!("{what}: {err}"))
    }

    /// The failure of a request to `url` that got no answer.
    pub fn unreachable(url: &str, err: &reqwest::Error) -> Failure {
        // reqwest's own text repeats the URL; the innermost cause is what happened.
        let mut cause: &dyn std::error::Error = err;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        let why = if err.is_timeout() {
            "no answer in time".to_owned()
        } else {
            cause.to_string()
        };
        Failure::Unreachable {
            url: url.to_owned(),
            why,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::Api { .. } => exit::API,
            Failure::Unreachable { .. } => exit::UNREACHABLE,
            Failure::Usage(_) | Failure::Local(_) => exit::USAGE,
        })
    }

    /// What to try next, when there is something to say.
    fn hint(&self) -> Option<String> {
        match self {
            Failure::Api { code, .. } if code == "unauthorized" => {
                Some("check TASKFLEET_KEY, or sign in again with `taskfleet login`".to_owned())
            }
            Failure::Api {
                retry_after: Some(seconds),
                ..
            } => Some(format!("try again in {seconds} s")),
            Failure::Api { code, .. } if code == "ledger_unavailable" => {
                Some("the API cannot reach its database; try again shortly".to_owned())
            }
            Failure::Unreachable { .. } => Some(
                "is the API running there? Set TASKFLEET_URL or run `taskfleet login --url URL`"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Api {
                status,
                code,
                message,
                ..
            } => write!(f, "{message} ({status} {code})")?,
            Failure::Unreachable { url, why } => write!(f, "could not reach {url}: {why}")?,
            Failure::Usage(message) | Failure::Local(message) => f.write_str(message)?,
        }
        if let Some(hint) = self.hint() {
            write!(f, "\n  {hint}")?;
        }
        Ok(())
    }
}
