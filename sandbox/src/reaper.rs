//! Killing what is left of a command, and what it used. The warden is the subreaper of the
//! command's descendants, so every process the command started is, once its parent is gone,
//! a child of the warden's: killing the warden's children until none is left kills them all,
//! whatever sessions or groups they moved to.

use std::{os::unix::process::ExitStatusExt, process::ExitStatus, time::Duration};

/// Kills the command's process group (its session: the command called `setsid`).
pub fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill takes integers; a group already gone answers ESRCH, which is fine.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// Kills and reaps every child of the warden until none is left; returns how many the warden
/// killed (those that were still running when the command ended or was stopped: the group
/// kill before this counts too, as it is the same SIGKILL).
pub fn kill_children() -> u32 {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut killed = 0;
    loop {
        for (pid, state) in children_of(me) {
            if state != 'Z' {
                // SAFETY: kill takes integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        loop {
            let mut status = 0;
            // SAFETY: waitpid fills a live local.
            match unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } {
                0 => break,
                -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
                -1 => return killed,
                _ if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL => {
                    killed += 1
                }
                _ => {}
            }
        }
        // Killed children take a moment to die; their own children then become ours.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reaps the warden's children that have exited, but `command`, whose pid must keep naming
/// its process group until the warden kills that.
pub fn reap_exited_except(command: libc::pid_t) {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    for (pid, state) in children_of(me) {
        if pid != command && state == 'Z' {
            // SAFETY: a null status pointer is allowed.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

/// Whether `pid` has exited, leaving it unreaped.
pub fn has_exited(pid: libc::pid_t) -> bool {
    // SAFETY: waitid fills a live, zeroed local.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    // SAFETY: si_pid is set by waitid; zero when the child has not exited.
    rc == 0 && unsafe { info.si_pid() } == pid
}

/// Reaps the command; returns how it ended and the CPU time it used itself, which is what
/// its CPU limit counts (its children's is their own).
pub fn wait_for(pid: libc::pid_t) -> (std::io::Result<ExitStatus>, u64) {
    let mut status = 0;
    // SAFETY: wait4 fills live locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            return (Ok(ExitStatus::from_raw(status)), cpu_ms(&usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return (Err(err), 0);
        }
    }
}

/// The warden's children and their states, from `/proc/*/stat` (after the name in
/// parentheses, which may hold spaces: the state, then the parent's pid).
fn children_of(parent: libc::pid_t) -> Vec<(libc::pid_t, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .parse::<libc::pid_t>()
                .ok()
        })
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid: libc::pid_t = fields.next()?.parse().ok()?;
            (ppid == parent).then_some((pid, state))
        })
        .collect()
}

fn cpu_ms(usage: &libc::rusage) -> u64 {
    let ms = |time: libc::timeval| time.tv_sec as u64 * 1000 + time.tv_usec as u64 / 1000;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

pub struct Usage {
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
}

/// What the reaped descendants used: CPU summed, and the largest resident set among them.
pub fn children_usage() -> Usage {
    // SAFETY: getrusage fills a live, zeroed local.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    Usage {
        cpu_ms: cpu_ms(&usage),
        // Linux counts ru_maxrss in KiB.
        peak_memory_bytes: usage.ru_maxrss as u64 * 1024,
    }
}
