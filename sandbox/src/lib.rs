//! What the worker and the sandbox warden (`taskfleet-sandbox`) say to each other. The worker
//! starts the warden with an empty environment, writes one [`Request`] line to its stdin and
//! keeps stdin open; the warden runs the command, and prints one [`Report`] line to its stdout.
//! Closing the warden's stdin (the job was cancelled, the worker died) makes it kill the
//! command and everything it started.
//!
//! The warden is a process of its own because what it does is process-wide: it becomes the
//! subreaper of the command's descendants and may move into a network namespace of its own,
//! neither of which a worker running many jobs may do to itself.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod uids;

/// The warden's binary, installed beside the worker's.
pub const WARDEN_BINARY: &str = "taskfleet-sandbox";

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Absolute path of the program.
    pub program: String,
    pub args: Vec<String>,
    /// The whole environment of the command.
    pub env: Vec<(String, String)>,
    /// The working directory: the job's files and nothing else.
    pub dir: PathBuf,
    pub limits: Limits,
    /// Whether the command may reach the network; when not, it runs in a network namespace
    /// of its own if the warden can make one.
    pub network: bool,
    /// The user and group to run as, when the warden runs as root: one of its own per run, so
    /// runs cannot see or signal each other ([`uids::UidPool`]).
    pub run_as: Option<RunAs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// What one run may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub timeout_ms: u64,
    pub cpu_secs: u64,
    pub memory_bytes: u64,
    pub file_size_bytes: u64,
    pub open_files: u64,
    pub processes: u64,
    /// Bytes kept of stdout and of stderr each.
    pub max_output_bytes: u64,
}

/// How a run ended, and what it used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub end: End,
    pub duration_ms: u64,
    /// User and system CPU time of the command and its descendants.
    pub cpu_ms: u64,
    /// The largest resident set any of its processes reached.
    pub peak_memory_bytes: u64,
    pub stdout: Output,
    pub stderr: Output,
    /// Processes still alive when the command ended (or was stopped), killed by the warden.
    pub orphans_killed: u32,
    /// `isolated` (a network namespace of its own), `allowed` (the tool may use the network),
    /// or `shared: <why isolation failed>`.
    pub network: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum End {
    /// The command exited by itself.
    Exited { code: i32 },
    /// A signal ended it: one it raised (SIGABRT, SIGSEGV), or a limit's (SIGXCPU, SIGXFSZ,
    /// SIGKILL past the CPU limit). `cpu_exhausted`: the command itself used its CPU time.
    Signalled { signal: i32, cpu_exhausted: bool },
    /// It ran past its wall-clock timeout; the warden killed it.
    TimedOut,
    /// The worker went away (stdin closed); the warden killed it.
    Abandoned,
    /// It could not be started; `retryable` when another try could work (not for a missing
    /// program or one it may not run).
    NotStarted { message: String, retryable: bool },
}

/// One output stream, capped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// What was kept, as UTF-8 (invalid sequences replaced).
    pub text: String,
    /// Everything the command wrote, kept or not.
    pub bytes: u64,
    pub truncated: bool,
}

/// Whether this process runs as root, and so must run commands as another user.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
