//! The terminal `top` draws on: the alternate screen, the cursor hidden, keys read one at a
//! time without echo (cbreak mode: Ctrl-C stays a signal). All of it is put back when the
//! guard drops, which happens on every way out, a panic included, and for as long as the
//! process is stopped by Ctrl-Z.

use std::{
    io::{Read, Write},
    mem::MaybeUninit,
};

pub struct Screen {
    /// The terminal's settings before, when standard input is a terminal.
    saved: Option<libc::termios>,
}

impl Screen {
    pub fn enter() -> Screen {
        // SAFETY: tcgetattr writes the struct it is given, and it is read only on success.
        let saved = unsafe {
            let mut settings = MaybeUninit::<libc::termios>::uninit();
            (libc::tcgetattr(libc::STDIN_FILENO, settings.as_mut_ptr()) == 0)
                .then(|| settings.assume_init())
        };
        take(saved);
        // A panic's message is printed before the guard drops: put the terminal back first,
        // or the message goes to the alternate screen and vanishes with it.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore(saved);
            previous(info);
        }));
        Screen { saved }
    }

    /// Ctrl-Z: puts the terminal back and stops the process, as the default action of
    /// SIGTSTP would but with the shell's screen and line editing restored; once continued
    /// (`fg`), takes the terminal again. The caller redraws.
    pub fn suspend(&self) {
        restore(self.saved);
        // SAFETY: raising a signal has no preconditions; SIGSTOP cannot be caught, and the
        // call returns once the process is continued.
        unsafe { libc::raise(libc::SIGSTOP) };
        take(self.saved);
    }

    /// Whether keys are read (standard input is a terminal).
    pub fn reads_keys(&self) -> bool {
        self.saved.is_some()
    }

    /// Draws `lines` over the previous frame, clearing what it leaves.
    pub fn draw(&self, lines: &[&str]) {
        let mut out = std::io::stdout();
        let _ = write!(out, "\x1b[H{}\x1b[K\x1b[J", lines.join("\x1b[K\n"));
        let _ = out.flush();
    }

    /// Sends on `stop` at each press of `q` (nothing when standard input is not a terminal).
    pub fn forward_quit_keys(&self, stop: tokio::sync::mpsc::Sender<()>) {
        if self.saved.is_none() {
            return;
        }
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut byte = [0u8];
            while let Ok(1) = stdin.read(&mut byte) {
                if matches!(byte[0], b'q' | b'Q') && stop.blocking_send(()).is_err() {
                    return;
                }
            }
        });
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore(self.saved);
    }
}

/// Keys one at a time without echo (when `saved`, the terminal's settings, says standard
/// input is a terminal), the alternate screen, the cursor hidden.
fn take(saved: Option<libc::termios>) {
    if let Some(saved) = saved {
        let mut cbreak = saved;
        cbreak.c_lflag &= !(libc::ICANON | libc::ECHO);
        cbreak.c_cc[libc::VMIN] = 1;
        cbreak.c_cc[libc::VTIME] = 0;
        // SAFETY: a valid termios for the descriptor it came from.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &cbreak) };
    }
    let mut out = std::io::stdout();
    let _ = write!(out, "\x1b[?1049h\x1b[?25l");
    let _ = out.flush();
}

/// The normal screen, the cursor, and the terminal's settings as they were (doing it twice
/// is harmless).
fn restore(saved: Option<libc::termios>) {
    let mut out = std::io::stdout();
    let _ = write!(out, "\x1b[?25h\x1b[?1049l");
    let _ = out.flush();
    if let Some(saved) = saved {
        // SAFETY: the settings read from this descriptor in `Screen::enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved) };
    }
}
