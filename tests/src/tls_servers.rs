//! A Redis and a Postgres of one test's own that speak TLS only, with certificates from an
//! authority the test makes: what a managed Redis or Postgres looks like to the fleet.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use uuid::Uuid;

use crate::{free_port, spawn_server, wait_until};

/// PEM files made with `openssl`: an authority, a server certificate it signed for
/// `127.0.0.1` and `localhost`, a client certificate it signed, and a second authority
/// that signed nothing here (a wrong `REDIS_TLS_CA_FILE` or `sslrootcert`).
pub struct Certificates {
    pub dir: PathBuf,
}

impl Certificates {
    pub fn make() -> Certificates {
        let dir = std::env::temp_dir().join(format!("tf-tls-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let certificates = Certificates { dir };
        certificates.authority("ca");
        certificates.authority("stranger-ca");
        certificates.signed("server", "subjectAltName=IP:127.0.0.1,DNS:localhost");
        certificates.signed("client", "extendedKeyUsage=clientAuth");
        certificates
    }

    /// The file `name` (`ca.pem`, `server.key`, …).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// [`Certificates::file`] as text, for an environment variable.
    pub fn path(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    fn authority(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=taskfleet test {name}"),
            "-keyout",
            &self.path(&format!("{name}.key")),
            "-out",
            &self.path(&format!("{name}.pem")),
        ]);
    }

    fn signed(&self, name: &str, extension: &str) {
        let (csr, ext) = (
            self.path(&format!("{name}.csr")),
            self.path(&format!("{name}.ext")),
        );
        std::fs::write(&ext, format!("{extension}\n")).expect("extension file");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN=taskfleet test {name}"),
            "-keyout",
            &self.path(&format!("{name}.key")),
            "-out",
            &csr,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.path("ca.pem"),
            "-CAkey",
            &self.path("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &self.path(&format!("{name}.pem")),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs (Debian package openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's `redis-server` on a TLS port only (its plain port is 0), asking every client
/// for a certificate of the test's authority (`tls-auth-clients yes`).
pub struct TlsRedis {
    pub port: u16,
    process: Child,
}

impl TlsRedis {
    pub async fn start(certificates: &Certificates) -> TlsRedis {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &certificates.path("server.pem")])
            .args(["--tls-key-file", &certificates.path("server.key")])
            .args(["--tls-ca-cert-file", &certificates.path("ca.pem")])
            .args([
                "--tls-auth-clients",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
        let process = spawn_server(
            &mut cmd,
            "redis-server with TLS (Debian package redis-server)",
        );
        wait_until(
            Duration::from_secs(10),
            "Redis listens on its TLS port",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        TlsRedis { port, process }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A Postgres cluster of the test's own (Debian's server binaries), with the test's server
/// certificate and a `pg_hba.conf` that lets in TLS connections only (`hostssl`).
pub struct TlsPostgres {
    pub port: u16,
    dir: PathBuf,
    process: Child,
}

impl TlsPostgres {
    pub async fn start(certificates: &Certificates) -> TlsPostgres {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tf-tls-postgres-{}", Uuid::new_v4().simple()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("Postgres directory");
        // The server's key must belong to the user Postgres runs as and be private to it.
        for name in ["server.pem", "server.key", "ca.pem"] {
            std::fs::copy(certificates.file(name), dir.join(name)).expect("certificate copy");
        }
        let user = unprivileged_user();
        if user.is_some() {
            run(
                Command::new("chown").args(["-R", "postgres"]).arg(&dir),
                "chown",
            );
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("key permissions");
        run(
            as_user(user, &server_binary("initdb"))
                .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
                .arg(&data),
            "initdb",
        );
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba.conf");
        let mut cmd = as_user(user, &server_binary("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args([
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                dir.join("server.pem").display()
            ))
            .arg("-c")
            .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
        let process = spawn_server(&mut cmd, "postgres with TLS (Debian package postgresql)");
        let socket = dir.clone();
        wait_until(
            Duration::from_secs(30),
            "the test's Postgres accepts connections",
            || {
                let socket = socket.clone();
                async move {
                    Command::new("pg_isready")
                        .args(["-q", "-h"])
                        .arg(&socket)
                        .args(["-p", &port.to_string()])
                        .status()
                        .is_ok_and(|status| status.success())
                }
            },
        )
        .await;
        TlsPostgres { port, dir, process }
    }

    /// A URL of database `database` over TCP, with `params` (`sslmode=verify-full&…`).
    pub fn url(&self, database: &str, params: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?{params}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Postgres refuses to run as root; as root, the servers run as Debian's `postgres` user
/// (its user and group ids).
fn unprivileged_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions; getpwnam's answer is read before any other call
    // could reuse it.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let entry = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !entry.is_null(),
            "Debian's postgres user exists (make services installs it)"
        );
        Some(((*entry).pw_uid, (*entry).pw_gid))
    }
}

/// `program` run as `user`: the server itself, not a wrapper such as `runuser`, so that
/// killing it (and the test's death, [`spawn_server`]) stops Postgres at once.
fn as_user(user: Option<(u32, u32)>, program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A program of Debian's newest Postgres server package (`/usr/lib/postgresql/N/bin`).
fn server_binary(name: &str) -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres's server binaries are installed (make services does it)")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let version = versions
        .last()
        .expect("a Postgres version in /usr/lib/postgresql");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin/{name}"))
}

fn run(cmd: &mut Command, what: &str) {
    let output = cmd
        .output()
        .unwrap_or_else(|err| panic!("{what} runs: {err}"));
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
