//! `executor.run` of an allow-listed command. The job's files go into a fresh directory that
//! only the sandbox user may use; the warden (`taskfleet-sandbox`) runs the command there and
//! reports; the files the tool changed come back when it may write; the directory is removed
//! whatever happened.
//!
//! A run that ends with an exit code the tool declares as its verdict (a check that found
//! problems exits 1) is a successful job carrying that code. A timeout, a limit the kernel
//! enforced, another exit code, or a sandbox that could not run the command is a failed attempt.

use std::{
    collections::BTreeMap,
    fs::{DirBuilder, OpenOptions},
    io::{Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::json;
use taskfleet_jobs::{CommandTool, ExecutorRules, executor::CommandCall};
use taskfleet_sandbox::{End, Limits, Report, Request, RunAs, WARDEN_BINARY, uids::UidPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use super::{HandlerResult, JobContext, JobFailure};

const MIB: u64 = 1024 * 1024;
/// Entries of a job's directory looked at when reading back what the tool wrote.
const MAX_ENTRIES_READ_BACK: usize = 10_000;
/// How long past the command's own timeout the warden has to report before the worker gives
/// up on it.
const WARDEN_GRACE: Duration = Duration::from_secs(10);

/// How this worker runs commands.
#[derive(Debug)]
pub struct Sandbox {
    warden: PathBuf,
    /// The user ids runs get, one each: set when the worker runs as root. Otherwise
    /// commands run as the worker's own user.
    uids: Option<UidPool>,
    /// Commands running at once, at most: they need cores and memory where the executor
    /// queue's other jobs need neither, so the queue may run many jobs at once while its
    /// commands wait their turn here.
    slots: tokio::sync::Semaphore,
}

impl Sandbox {
    /// `warden` defaults to `taskfleet-sandbox` beside the worker's binary; `uids` is the
    /// range of user ids runs get when the worker is root; `slots` how many commands run at
    /// once. A worker allowed commands it cannot run does not start.
    pub fn new(
        warden: Option<PathBuf>,
        uids: &str,
        slots: usize,
        rules: &ExecutorRules,
    ) -> anyhow::Result<Self> {
        let warden = match warden {
            Some(path) => path,
            None => std::env::current_exe()?
                .parent()
                .map(|dir| dir.join(WARDEN_BINARY))
                .ok_or_else(|| anyhow::anyhow!("the worker's binary is in no directory"))?,
        };
        let uids = match taskfleet_sandbox::running_as_root() {
            true => Some(
                UidPool::parse(uids)
                    .map_err(|err| anyhow::anyhow!("TASKFLEET_EXECUTOR_UIDS: {err}"))?,
            ),
            false => None,
        };
        if rules.commands.tools().next().is_some() {
            if uids.is_none() {
                // Commands run as this user: they may not read this process's memory or its
                // environment (`DATABASE_URL`, keys) through /proc.
                // SAFETY: prctl with these options takes plain integers.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
            }
            anyhow::ensure!(
                warden.is_file(),
                "the sandbox warden {} is missing (build it with the worker, or set TASKFLEET_SANDBOX_BIN)",
                warden.display()
            );
            for tool in rules.commands.tools() {
                if !Path::new(&tool.program).is_file() {
                    tracing::warn!(tool = %tool.name, program = %tool.program, "an allow-listed program is not on this machine; its jobs will fail");
                }
            }
        }
        Ok(Sandbox {
            warden,
            uids,
            slots: tokio::sync::Semaphore::new(slots),
        })
    }

    /// Runs one request through the warden. The warden's stdin stays open while it runs:
    /// when this future is dropped (the job was cancelled, or its lease lost) stdin closes,
    /// and the warden kills the command and all it started.
    async fn run(&self, request: &Request) -> Result<Report, JobFailure> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the command slots are never closed");
        let failed = |what: String| JobFailure::retryable(format!("the sandbox failed: {what}"));
        let mut warden = tokio::process::Command::new(&self.warden)
            .env_clear()
            // A Ctrl-C meant for the worker is the worker's to handle: it drains, and a run
            // it gives up on is stopped through the warden's stdin.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| failed(format!("{} does not start: {err}", self.warden.display())))?;
        let mut stdin = warden.stdin.take().expect("piped");
        let mut line = serde_json::to_vec(request).expect("a request serialises");
        line.push(b'\n');
        stdin
            .write_all(&line)
            .await
            .map_err(|err| failed(format!("could not send the request: {err}")))?;
        // Two capped streams, escaped as JSON, and the rest of the report.
        let report_cap = 12 * request.limits.max_output_bytes + 64 * 1024;
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut stdout = warden.stdout.take().expect("piped").take(report_cap);
        let mut stderr = warden.stderr.take().expect("piped").take(64 * 1024);
        let grace = Duration::from_millis(request.limits.timeout_ms) + WARDEN_GRACE;
        let finished = tokio::time::timeout(grace, async {
            let (read_out, read_err) =
                tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            read_out.and(read_err)?;
            warden.wait().await
        })
        .await;
        drop(stdin);
        match finished {
            Err(_) => {
                // Its stdin is closed now, which tells it to kill the command; it gets a
                // moment for that before it is killed itself.
                if tokio::time::timeout(WARDEN_GRACE, warden.wait())
                    .await
                    .is_err()
                {
                    let _ = warden.start_kill();
                }
                Err(failed(format!("no report within {} s", grace.as_secs())))
            }
            Ok(Err(io)) => Err(failed(format!("lost the warden: {io}"))),
            Ok(Ok(_)) => serde_json::from_slice(&out).map_err(|_| {
                failed(format!(
                    "the warden reported nothing it could read: {}",
                    String::from_utf8_lossy(&err).trim()
                ))
            }),
        }
    }
}

/// Runs an allow-listed command on the job's files.
pub async fn run(call: CommandCall, ctx: &JobContext) -> HandlerResult {
    let sandbox = ctx.services.sandbox.clone();
    let tool = call.tool.clone();
    let file_count = match call.files.len() {
        1 => "1 file".to_owned(),
        n => format!("{n} files"),
    };
    ctx.progress(0.0, &format!("running {} on {file_count}", tool.name))
        .await;
    // The run's own user id, held until its directory is gone.
    let uid = match &sandbox.uids {
        Some(pool) => Some(pool.claim().map_err(|err| {
            JobFailure::retryable(format!("the sandbox has no user id to give: {err}"))
        })?),
        None => None,
    };
    let run_as = uid.as_ref().map(|lease| lease.run_as);
    let sent = call.files.clone();
    let dir = blocking(move || JobDir::create(&sent, run_as))
        .await
        .map_err(|err| {
            JobFailure::retryable(format!("could not prepare the job's directory: {err}"))
        })?;
    let request = request(&call, dir.path.clone(), run_as);
    let report = sandbox.run(&request).await;
    let read_back = tool.writes_files && report.is_ok();
    let max_bytes = tool.limits.max_input_bytes;
    // The directory goes when the closure ends (its drop logs what it could not remove).
    let files = blocking(move || Ok(read_back.then(|| dir.changes(&call.files, max_bytes))))
        .await
        .ok()
        .flatten();
    drop(uid);
    let report = report?;
    let verdict = verdict(&tool, &report);
    let summary = summary(&tool, &report, files.as_ref(), &verdict);
    ctx.progress(verdict.is_ok().then_some(100.0), &summary)
        .await;
    let exit_code = verdict?;
    let mut result = json!({
        "tool": tool.name,
        "exit_code": exit_code,
        "summary": summary,
        "stdout": report.stdout.text,
        "stdout_bytes": report.stdout.bytes,
        "stdout_truncated": report.stdout.truncated,
        "stderr": report.stderr.text,
        "stderr_bytes": report.stderr.bytes,
        "stderr_truncated": report.stderr.truncated,
        "duration_ms": report.duration_ms,
        "cpu_ms": report.cpu_ms,
        "peak_memory_bytes": report.peak_memory_bytes,
        "orphans_killed": report.orphans_killed,
        "network": report.network,
    });
    if let Some(files) = files {
        result["files_changed"] = json!(files.changed);
        result["files_deleted"] = json!(files.deleted);
        result["files_skipped"] = json!(files.skipped);
    }
    Ok(result)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|panic| Err(std::io::Error::other(panic.to_string())))
}

/// The warden's request: the tool's own arguments then the job's, and an environment of only
/// the variables the operator allowed.
fn request(call: &CommandCall, dir: PathBuf, run_as: Option<RunAs>) -> Request {
    let tool = &call.tool;
    let mut env: Vec<(String, String)> = tool
        .env
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    for name in &tool.pass_env {
        if let Ok(value) = std::env::var(name) {
            env.push((name.clone(), value));
        }
    }
    let limits = tool.limits;
    Request {
        program: tool.program.clone(),
        args: tool.args.iter().chain(&call.args).cloned().collect(),
        env,
        dir,
        limits: Limits {
            timeout_ms: limits.timeout_secs * 1000,
            cpu_secs: limits.cpu_secs,
            memory_bytes: limits.memory_mib * MIB,
            file_size_bytes: limits.file_size_mib * MIB,
            open_files: limits.open_files,
            processes: limits.processes,
            max_output_bytes: limits.max_output_bytes,
        },
        network: tool.network,
        run_as,
    }
}

/// The exit code, when the run is the tool's verdict; otherwise why the attempt failed.
fn verdict(tool: &CommandTool, report: &Report) -> Result<i32, JobFailure> {
    let name = &tool.name;
    let limits = &tool.limits;
    let message = match &report.end {
        End::Exited { code }
            if tool.result_exit_codes.is_empty() || tool.result_exit_codes.contains(code) =>
        {
            return Ok(*code);
        }
        End::Exited { code } => {
            let said = report
                .stderr
                .text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty());
            match said {
                Some(line) => format!("{name} failed with exit code {code}: {}", line.trim()),
                None => format!("{name} failed with exit code {code}"),
            }
        }
        End::Signalled {
            cpu_exhausted: true,
            ..
        } => format!(
            "{name} used its {} s of CPU time and was stopped",
            limits.cpu_secs
        ),
        End::Signalled { signal, .. } if *signal == libc::SIGXFSZ => format!(
            "{name} wrote a file past its limit of {} MiB and was stopped",
            limits.file_size_mib
        ),
        End::Signalled { signal, .. } => format!(
            "{name} was killed by {} (peak memory {} MiB; its address space is limited to {} MiB, \
             and a program that cannot allocate often aborts)",
            signal_name(*signal),
            report.peak_memory_bytes.div_ceil(MIB),
            limits.memory_mib
        ),
        End::TimedOut => format!(
            "{name} ran past its timeout of {} s and was killed{}",
            limits.timeout_secs,
            match report.orphans_killed {
                0 => String::new(),
                1 => ", with the other process it had started".into(),
                n => format!(", with the {n} other processes it had started"),
            }
        ),
        End::Abandoned => "the sandbox stopped the command: it lost sight of the worker".into(),
        End::NotStarted {
            message,
            retryable: false,
        } => {
            let message = format!("the sandbox could not run {name}: {message}");
            return Err(JobFailure::permanent(message));
        }
        End::NotStarted { message, .. } => format!("the sandbox could not run {name}: {message}"),
    };
    Err(JobFailure::retryable(message))
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGILL => "SIGILL".into(),
        libc::SIGFPE => "SIGFPE".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGTRAP => "SIGTRAP".into(),
        other => format!("signal {other}"),
    }
}

/// One line for the job's last progress event and its result.
fn summary(
    tool: &CommandTool,
    report: &Report,
    files: Option<&FileChanges>,
    verdict: &Result<i32, JobFailure>,
) -> String {
    let mut line = match verdict {
        Ok(code) => format!("{} exited {code} in {} ms", tool.name, report.duration_ms),
        Err(failure) => failure.message.clone(),
    };
    for (stream, output) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
        if output.truncated {
            line.push_str(&format!(
                "; {stream} cut at {} of {} bytes",
                tool.limits.max_output_bytes, output.bytes
            ));
        }
    }
    if let Some(files) = files {
        line.push_str(&format!(
            "; {} files changed",
            files.changed.len() + files.deleted.len()
        ));
    }
    if report.network.starts_with("shared") {
        line.push_str("; ran with the worker's network");
    }
    line
}

/// A job's working directory, removed when dropped.
struct JobDir {
    path: PathBuf,
}

/// What the tool did to the job's files.
#[derive(Debug, Default)]
struct FileChanges {
    /// New or changed files with their contents.
    changed: BTreeMap<String, String>,
    deleted: Vec<String>,
    /// Entries not read back, with why: links, devices, text that is not UTF-8, or past the
    /// size limit.
    skipped: BTreeMap<String, String>,
}

impl JobDir {
    /// A fresh directory holding the files, owned by `run_as` when set.
    fn create(files: &BTreeMap<String, String>, run_as: Option<RunAs>) -> std::io::Result<JobDir> {
        let path = std::env::temp_dir().join(format!("taskfleet-job-{}", Uuid::new_v4().simple()));
        DirBuilder::new().mode(0o700).create(&path)?;
        let dir = JobDir { path };
        for (name, content) in files {
            // Checked when the job was accepted, and again here, where root writes them: a
            // `CommandCall` built any other way must not reach outside the directory either.
            taskfleet_jobs::executor_commands::check_file_path(name)
                .map_err(|why| std::io::Error::other(format!("{name}: {why}")))?;
            let file = dir.path.join(name);
            if let Some(parent) = file.parent() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&file)?
                .write_all(content.as_bytes())?;
        }
        if let Some(run_as) = run_as {
            // Deepest first and the directory itself last: until then only root may enter it,
            // so nothing can swap a part of a path for a link while root works in it.
            for entry in walk(&dir.path, usize::MAX)?.iter().rev() {
                std::os::unix::fs::lchown(entry, Some(run_as.uid), Some(run_as.gid))?;
            }
        }
        Ok(dir)
    }

    /// What differs from the files sent, reading at most `max_bytes` back. Links are never
    /// followed: the tool is dead by now, and what it left is read as it lies.
    fn changes(&self, sent: &BTreeMap<String, String>, max_bytes: u64) -> FileChanges {
        let mut changes = FileChanges::default();
        let mut budget = max_bytes;
        let past_budget = || format!("past the {max_bytes} bytes read back");
        let entries = walk(&self.path, MAX_ENTRIES_READ_BACK).unwrap_or_default();
        for entry in entries.into_iter().skip(1) {
            let Ok(relative) = entry.strip_prefix(&self.path) else {
                continue;
            };
            let name = relative.to_string_lossy().into_owned();
            let Ok(meta) = entry.symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                continue;
            }
            if !meta.is_file() {
                changes.skipped.insert(name, "not a regular file".into());
                continue;
            }
            match read_no_follow(&entry, budget) {
                Ok(bytes) if bytes.len() as u64 > budget => {
                    changes.skipped.insert(name, past_budget());
                }
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) if sent.get(&name) == Some(&text) => {}
                    Ok(text) => {
                        budget -= text.len() as u64;
                        changes.changed.insert(name, text);
                    }
                    Err(_) => {
                        changes.skipped.insert(name, "not UTF-8 text".into());
                    }
                },
                Err(err) => {
                    changes.skipped.insert(name, format!("unreadable: {err}"));
                }
            }
        }
        // Looked up one by one: a listing cut short must not pass for deletions.
        changes.deleted = sent
            .keys()
            .filter(|name| self.path.join(name).symlink_metadata().is_err())
            .cloned()
            .collect();
        changes
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.path).is_ok() {
            return;
        }
        // A tool running as the worker's own user may have taken away its directories'
        // permissions; give them back and try again.
        for entry in walk(&self.path, usize::MAX).unwrap_or_default() {
            if entry.symlink_metadata().is_ok_and(|meta| meta.is_dir()) {
                let _ = std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o700));
            }
        }
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), %err, "could not remove a job's directory");
        }
    }
}

/// The directory and everything under it, without following links, up to `limit` entries.
fn walk(root: &Path, limit: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut found = vec![root.to_path_buf()];
    let mut next = 0;
    while next < found.len() && found.len() < limit {
        let dir = found[next].clone();
        next += 1;
        if !dir.symlink_metadata()?.is_dir() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten().take(limit - found.len()) {
            found.push(entry.path());
        }
    }
    Ok(found)
}

/// At most `limit + 1` bytes of a file, so a file that grew past the limit shows it.
fn read_no_follow(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_directory_holds_the_files_and_reads_back_what_changed() {
        let sent = BTreeMap::from([
            ("src/a.py".to_owned(), "x=1\n".to_owned()),
            ("b.py".to_owned(), "y = 2\n".to_owned()),
            ("gone.txt".to_owned(), "bye\n".to_owned()),
        ]);
        let dir = JobDir::create(&sent, None).unwrap();
        let path = dir.path.clone();
        assert_eq!(
            std::fs::read_to_string(path.join("src/a.py")).unwrap(),
            "x=1\n"
        );
        std::fs::write(path.join("src/a.py"), "x = 1\n").unwrap();
        std::fs::remove_file(path.join("gone.txt")).unwrap();
        std::fs::write(path.join("new.txt"), "hello").unwrap();
        std::fs::write(path.join("bin"), [0xff, 0xfe]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", path.join("link")).unwrap();
        std::fs::write(path.join("big"), "z".repeat(100)).unwrap();
        let changes = dir.changes(&sent, 50);
        assert_eq!(
            changes.changed.get("src/a.py").map(String::as_str),
            Some("x = 1\n")
        );
        assert_eq!(
            changes.changed.get("new.txt").map(String::as_str),
            Some("hello")
        );
        assert!(!changes.changed.contains_key("b.py"));
        assert_eq!(changes.deleted, ["gone.txt"]);
        assert_eq!(
            changes.skipped.get("link").map(String::as_str),
            Some("not a regular file")
        );
        assert!(changes.skipped["bin"].contains("UTF-8"));
        assert!(changes.skipped["big"].contains("50 bytes"));
        // A directory whose permissions the tool took away is removed all the same.
        std::fs::set_permissions(path.join("src"), std::fs::Permissions::from_mode(0o000)).unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
