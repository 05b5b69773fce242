//! A program on a real terminal: a tmux session of a fixed size running one command, whose
//! screen a test reads as a person would see it and whose keys it presses. Each terminal
//! has a tmux server of its own, stopped when it is dropped.

use std::{process::Command, time::Duration};

use tokio::time::Instant;

/// What the shell prints after the command, before its exit status.
const EXITED: &str = "[exited with ";

pub struct Terminal {
    socket: String,
}

impl Terminal {
    /// Runs `command` (a shell command line) on a `cols`×`rows` terminal with `env` set.
    /// `None` when tmux is not installed.
    pub fn start(command: &str, env: &[(&str, &str)], cols: u16, rows: u16) -> Option<Terminal> {
        let socket = format!("taskfleet-test-{}", uuid::Uuid::new_v4().simple());
        let mut tmux = Command::new("tmux");
        tmux.args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()]);
        for (name, value) in env {
            tmux.args(["-e", &format!("{name}={value}")]);
        }
        let status = tmux
            // The shell stays after the command, so its last screen can still be read.
            .arg(format!("{command}; echo \"{EXITED}$?]\"; exec sleep 3600"))
            .status()
            .ok()?;
        assert!(status.success(), "tmux starts a session");
        Some(Terminal { socket })
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The screen as text, without colours.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "0"])
    }

    /// Waits until the screen shows every one of `texts`, and returns it; fails the test
    /// with the last screen otherwise.
    pub async fn wait_for(&self, texts: &[&str], within: Duration) -> String {
        self.wait_for_screen(&format!("{texts:?}"), within, |screen| {
            texts.iter().all(|text| screen.contains(text))
        })
        .await
    }

    /// Waits until the screen is as `shown` says (`what`, in the failure), and returns it.
    pub async fn wait_for_screen(
        &self,
        what: &str,
        within: Duration,
        shown: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen();
            if shown(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what}; it showed:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Presses keys, as tmux names them (`q`, `Enter`, `C-c`).
    pub fn press(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend(keys);
        self.tmux(&args);
    }

    /// Waits for the command to end and returns its exit status, which the shell that ran
    /// it printed last.
    pub async fn exit_status(&self, within: Duration) -> i32 {
        let screen = self.wait_for(&[EXITED], within).await;
        let said = &screen[screen.rfind(EXITED).expect("shown") + EXITED.len()..];
        said[..said.find(']').expect("the status is closed by ]")]
            .parse()
            .expect("an exit status")
    }
}

impl Terminal {
    /// Whether the terminal shows its alternate screen (a full-screen program's).
    pub fn on_alternate_screen(&self) -> bool {
        self.tmux(&["display-message", "-p", "-t", "0", "#{alternate_on}"])
            .trim()
            == "1"
    }

    /// Continues the command after Ctrl-Z stopped it, as `fg` would. The shell that runs it
    /// has no job control, so Ctrl-Z stopped its whole process group, the shell's own.
    pub fn continue_stopped(&self) {
        let leader = self.tmux(&["display-message", "-p", "-t", "0", "#{pane_pid}"]);
        let status = Command::new("kill")
            .args(["-CONT", "--", &format!("-{}", leader.trim())])
            .status()
            .expect("kill runs");
        assert!(status.success(), "the command's process group is continued");
    }

    /// The terminal's line settings as `stty -a` prints them (`icanon`, `-echo`, …).
    pub fn line_settings(&self) -> String {
        let tty = self.tmux(&["display-message", "-p", "-t", "0", "#{pane_tty}"]);
        let output = Command::new("stty")
            .args(["-a", "-F", tty.trim()])
            .output()
            .expect("stty runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}
