//! Debian's `pgbouncer` in front of the local Postgres, for one test, in the pool mode it
//! asks for: the connection pooler a managed Postgres at scale is reached through.

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use uuid::Uuid;

use crate::{free_port, spawn_server, wait_until};

pub struct Pgbouncer {
    pub port: u16,
    dir: PathBuf,
    process: Child,
}

impl Pgbouncer {
    /// Starts pgbouncer with `pool_mode` (`session` or `transaction`) and waits until it
    /// accepts connections. Postgres trusts local connections, and so does pgbouncer. It
    /// keeps up to 60 server connections per database: in session mode, each of a fleet's
    /// connections holds one for as long as it is open.
    pub async fn start(pool_mode: &str) -> Pgbouncer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tf-pgbouncer-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("pgbouncer directory");
        let users = dir.join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").expect("pgbouncer users");
        let config = dir.join("pgbouncer.ini");
        std::fs::write(
            &config,
            format!(
                "[databases]\n* = host=127.0.0.1 port=5432\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = {pool_mode}\n\
                 default_pool_size = 60\nmax_client_conn = 500\nlogfile = {log}\n",
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .expect("pgbouncer config");
        let mut cmd = Command::new(program());
        // pgbouncer refuses to run as root: it is given an unprivileged user then.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .expect("chown runs");
            assert!(
                status.success(),
                "the pgbouncer directory is given to postgres"
            );
            cmd.args(["-u", "postgres"]);
        }
        // Its log goes to the file as well.
        cmd.arg(&config);
        let process = spawn_server(&mut cmd, "pgbouncer (Debian package pgbouncer)");
        wait_until(Duration::from_secs(10), "pgbouncer listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Pgbouncer { port, dir, process }
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian installs pgbouncer in /usr/sbin, which is not on every user's PATH.
fn program() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/pgbouncer");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("pgbouncer")
    }
}
