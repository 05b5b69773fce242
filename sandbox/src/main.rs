//! `taskfleet-sandbox`: the warden of one allow-listed command. The worker starts it, sends a
//! [`Request`] line on stdin and reads a [`Report`] line from stdout (see the library's
//! documentation for the protocol).
//!
//! The warden makes itself the subreaper of everything the command starts, so a child that
//! leaves the command's process group or outlives it is still its to kill; it moves into a
//! network namespace of its own unless the tool may use the network; it starts the command in
//! a session of its own, as the sandbox user, with rlimits, an empty environment but for the
//! allowed variables, and stdin closed; and it keeps a capped copy of stdout and stderr. When
//! the command exits, runs out of time, or the worker goes away, the warden kills every process
//! left and reports.

mod capture;
mod reaper;

use std::{
    io::{self, BufRead, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use capture::Capture;
use taskfleet_sandbox::{End, Limits, Report, Request, running_as_root};

fn main() {
    let report = match read_request() {
        Ok(request) => run(&request),
        Err(message) => not_started(message, false, String::new()),
    };
    let mut stdout = io::stdout().lock();
    let line = serde_json::to_string(&report).expect("a report serialises");
    // The worker reads the report; if it is gone there is no one left to tell.
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

fn read_request() -> Result<Request, String> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| format!("could not read the request: {err}"))?;
    serde_json::from_str(&line).map_err(|err| format!("the request does not decode: {err}"))
}

fn not_started(message: String, retryable: bool, network: String) -> Report {
    Report {
        end: End::NotStarted { message, retryable },
        duration_ms: 0,
        cpu_ms: 0,
        peak_memory_bytes: 0,
        stdout: Default::default(),
        stderr: Default::default(),
        orphans_killed: 0,
        network,
    }
}

/// How often orphans that exited by themselves are reaped while the command runs.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// Why the warden stopped watching.
enum Stop {
    Exited,
    TimedOut,
    Abandoned,
}

fn run(request: &Request) -> Report {
    // SAFETY: prctl with these options takes plain integers.
    unsafe {
        // Orphans of the command become the warden's children, not init's.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        // Another process of the same user may not read the warden's memory or ptrace it.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    let network = match request.network {
        true => "allowed".to_owned(),
        false => isolate_network(),
    };
    let started = Instant::now();
    let mut child = match spawn(request) {
        Ok(child) => child,
        Err(err) => {
            let message = format!("could not start {}: {err}", request.program);
            // A missing program, or one the sandbox may not run, stays so.
            let lasting = matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            );
            return not_started(message, !lasting, network);
        }
    };
    let pid = child.id() as libc::pid_t;
    let cap = request.limits.max_output_bytes as usize;
    let mut stdout = Capture::new(child.stdout.take().map(OwnedFd::from), cap);
    let mut stderr = Capture::new(child.stderr.take().map(OwnedFd::from), cap);
    let deadline = started + Duration::from_millis(request.limits.timeout_ms);
    let stop = watch(pid, deadline, &mut stdout, &mut stderr);
    let duration_ms = started.elapsed().as_millis() as u64;
    // Nothing of a job outlives it: its session is killed while the command, even exited, is
    // not yet reaped (so its pid, the group's id, cannot have gone to another process), then
    // whatever left the session.
    reaper::kill_group(pid);
    let (status, own_cpu_ms) = reaper::wait_for(pid);
    drop(child);
    let orphans_killed = reaper::kill_children();
    // Every writer is gone, so the pipes end.
    capture::drain(&mut stdout, &mut stderr, Duration::from_secs(1));
    let end = match (stop, status) {
        (Stop::TimedOut, _) => End::TimedOut,
        (Stop::Abandoned, _) => End::Abandoned,
        (Stop::Exited, Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => End::Exited { code },
            (None, Some(signal)) => End::Signalled {
                signal,
                // SIGXCPU at the soft limit, SIGKILL at the hard one; its own time, not its
                // children's, is what the limit counts.
                cpu_exhausted: signal == libc::SIGXCPU
                    || (signal == libc::SIGKILL && own_cpu_ms >= request.limits.cpu_secs * 1000),
            },
            (None, None) => End::NotStarted {
                message: format!("unexpected wait status {status:?}"),
                retryable: true,
            },
        },
        (Stop::Exited, Err(err)) => End::NotStarted {
            message: format!("could not wait for the command: {err}"),
            retryable: true,
        },
    };
    let usage = reaper::children_usage();
    Report {
        end,
        duration_ms,
        cpu_ms: usage.cpu_ms,
        peak_memory_bytes: usage.peak_memory_bytes,
        stdout: stdout.finish(),
        stderr: stderr.finish(),
        orphans_killed,
        network,
    }
}

/// Moves the warden (and so the command) into a network namespace of its own, which has only
/// a loopback device, down. Root may make one; another user may when it can make a user
/// namespace too. When neither works the command shares the worker's network, and the report
/// says why.
fn isolate_network() -> String {
    // SAFETY: unshare takes flags.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        return "isolated".to_owned();
    }
    let err = io::Error::last_os_error();
    if !running_as_root() && user_namespace_network().is_ok() {
        return "isolated".to_owned();
    }
    format!("shared: could not make a network namespace ({err})")
}

/// A user namespace in which the warden keeps its own ids, holding a network namespace.
fn user_namespace_network() -> io::Result<()> {
    // SAFETY: getuid, getgid and unshare have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))
}

fn spawn(request: &Request) -> io::Result<Child> {
    let mut command = Command::new(&request.program);
    command
        .args(&request.args)
        .env_clear()
        .envs(request.env.iter().map(|(name, value)| (name, value)))
        .current_dir(&request.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(run_as) = request.run_as {
        // std drops the supplementary groups too when it changes user as root.
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let limits = request.limits;
    // SAFETY: getpid has no preconditions.
    let warden = unsafe { libc::getpid() };
    // SAFETY: `confine` makes system calls only, as a pre_exec hook must; it runs after std has
    // changed the user, so the rlimits hold for the sandbox user.
    unsafe { command.pre_exec(move || confine(&limits, warden)) };
    command.spawn()
}

/// In the child, before the program starts: a session of its own (so its process group is
/// the session's and the warden can kill it whole), death with the warden, no privileges to
/// gain, and the limits.
fn confine(limits: &Limits, warden: libc::pid_t) -> io::Result<()> {
    let check = |rc: libc::c_int| match rc {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    };
    // SAFETY: each call takes plain integers or a pointer to a live local.
    unsafe {
        check(libc::setsid())?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        // The warden died before that took hold: go now.
        if libc::getppid() != warden {
            libc::_exit(137);
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        let set = |resource, soft: u64, hard: u64| {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            check(libc::setrlimit(resource, &limit))
        };
        // SIGXCPU at the limit, SIGKILL a second later for a program that ignores it.
        set(libc::RLIMIT_CPU, limits.cpu_secs, limits.cpu_secs + 1)?;
        set(libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)?;
        set(
            libc::RLIMIT_FSIZE,
            limits.file_size_bytes,
            limits.file_size_bytes,
        )?;
        set(libc::RLIMIT_NOFILE, limits.open_files, limits.open_files)?;
        set(libc::RLIMIT_NPROC, limits.processes, limits.processes)?;
        // A core dump would copy the job's data out of its directory.
        set(libc::RLIMIT_CORE, 0, 0)?;
    }
    Ok(())
}

/// Relays output until the command exits, the deadline passes, or the worker closes stdin.
fn watch(pid: libc::pid_t, deadline: Instant, stdout: &mut Capture, stderr: &mut Capture) -> Stop {
    let exited = pidfd(pid);
    let mut last_reap = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Stop::TimedOut;
        }
        let mut wait_ms = (deadline - now).as_millis().min(i32::MAX as u128) as i32;
        // Orphans that exit by themselves are reaped as they go (they count against the
        // process limit while they are zombies); poll wakes at least this often for it.
        wait_ms = wait_ms.min(REAP_EVERY.as_millis() as i32);
        if last_reap.elapsed() >= REAP_EVERY {
            reaper::reap_exited_except(pid);
            last_reap = Instant::now();
        }
        if exited.is_none() {
            // Without a pidfd (Linux before 5.3), look at the child every few milliseconds,
            // leaving it unreaped so its pid still names its group.
            wait_ms = wait_ms.min(20);
            if reaper::has_exited(pid) {
                return Stop::Exited;
            }
        }
        let mut fds = [
            poll_fd(Some(0)),
            poll_fd(exited.as_ref().map(AsRawFd::as_raw_fd)),
            poll_fd(stdout.fd()),
            poll_fd(stderr.fd()),
        ];
        // SAFETY: `fds` is a live array of pollfd of the length passed.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if ready < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Stop::Abandoned;
        }
        if fds[2].revents != 0 {
            stdout.read_some();
        }
        if fds[3].revents != 0 {
            stderr.read_some();
        }
        if fds[0].revents != 0 && worker_gone() {
            return Stop::Abandoned;
        }
        if fds[1].revents != 0 {
            return Stop::Exited;
        }
    }
}

fn poll_fd(fd: Option<RawFd>) -> libc::pollfd {
    libc::pollfd {
        // A negative descriptor is skipped by poll.
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Whether the worker closed the warden's stdin: it sends nothing after the request.
fn worker_gone() -> bool {
    let mut byte = [0u8; 64];
    // SAFETY: reads into a live local buffer of the length passed.
    let read = unsafe { libc::read(0, byte.as_mut_ptr().cast(), byte.len()) };
    read <= 0
}

/// A descriptor that becomes readable when the process exits (Linux 5.3+).
fn pidfd(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; on success it returns a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
