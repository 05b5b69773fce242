//! A capped copy of one output stream: the first bytes are kept, the rest counted and dropped,
//! so a command that prints gigabytes costs the worker nothing but the time.

use std::{
    os::fd::{AsRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use taskfleet_sandbox::Output;

pub struct Capture {
    fd: Option<OwnedFd>,
    kept: Vec<u8>,
    cap: usize,
    bytes: u64,
}

impl Capture {
    pub fn new(fd: Option<OwnedFd>, cap: usize) -> Capture {
        Capture {
            fd,
            kept: Vec::new(),
            cap,
            bytes: 0,
        }
    }

    /// The pipe, while it is open.
    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// One read of what is ready; closes the pipe at its end.
    pub fn read_some(&mut self) {
        let Some(fd) = self.fd() else { return };
        let mut buffer = [0u8; 64 * 1024];
        // SAFETY: reads into a live local buffer of the length passed.
        let read = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if read < 0 {
            let err = std::io::Error::last_os_error();
            if matches!(
                err.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ) {
                return;
            }
        }
        if read <= 0 {
            self.fd = None;
            return;
        }
        let chunk = &buffer[..read as usize];
        self.bytes += chunk.len() as u64;
        let room = self.cap.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
    }

    pub fn finish(self) -> Output {
        Output {
            text: String::from_utf8_lossy(&self.kept).into_owned(),
            bytes: self.bytes,
            truncated: self.bytes > self.kept.len() as u64,
        }
    }
}

/// Reads both pipes to their end, for at most `within` (a descriptor passed to a process
/// outside the sandbox could keep one open).
pub fn drain(stdout: &mut Capture, stderr: &mut Capture, within: Duration) {
    let deadline = Instant::now() + within;
    while stdout.fd().is_some() || stderr.fd().is_some() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [stdout.fd(), stderr.fd()].map(|fd| libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `fds` is a live array of pollfd of the length passed.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, left.as_millis() as i32) };
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
        if fds[0].revents != 0 {
            stdout.read_some();
        }
        if fds[1].revents != 0 {
            stderr.read_some();
        }
    }
}
