//! Test harness: each test gets its own Postgres database and Redis key prefix on the shared
//! servers, runs the real `taskfleet-api` and `taskfleet-worker` binaries as child processes,
//! and removes everything it created when dropped.

pub mod browser;
pub mod connector_fleet;
pub mod fake_providers;
pub mod netns;
pub mod pgbouncer;
pub mod prometheus;
pub mod redis_cluster;
pub mod s3;
pub mod terminal;
pub mod tls_servers;

use std::{
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use redis::AsyncCommands;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use taskfleet_storage::redis::{RedisConfig, RedisTlsArgs};
use uuid::Uuid;

pub use serde_json::json;

/// Worker flags for failure tests: leases, leadership and lost Redis copies all recover
/// within seconds instead of the production defaults' tens of seconds.
pub const FAST_FAILOVER: &[&str] = &[
    "--concurrency",
    "16",
    "--lease-ttl-ms",
    "2000",
    "--leader-ttl-ms",
    "2000",
    "--redispatch-after-secs",
    "2",
];

/// [`FAST_FAILOVER`] and more worker flags.
pub fn fast_failover_and(more: &[&'static str]) -> Vec<&'static str> {
    FAST_FAILOVER.iter().chain(more).copied().collect()
}

/// The key that seals connector credentials in every process a test starts (never a real
/// one: tests keep no secrets).
pub const TEST_ENCRYPTION_KEY: &str =
    "7465737420656e6372797074696f6e206b657920666f72207461736b666c6565";

/// The Postgres server tests create their databases on.
pub fn admin_database_url() -> String {
    std::env::var("TASKFLEET_TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TASKFLEET_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A file of the repository, found from the checkout being tested (as `cargo test` says when
/// it runs the test): a build reused from another checkout through a shared target directory
/// carries that checkout's path in `env!`, which may be gone.
pub fn repository(path: &str) -> PathBuf {
    let tests = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    PathBuf::from(tests).join("..").join(path)
}

/// Where cargo put the binaries: beside the running executable, or one level up when it is
/// a test executable in `<target>/<profile>/deps/`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("the executable is in a directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("deps is in <target>/<profile>")
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`make test` does: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Has the kernel kill the process `cmd` starts when the thread that started it ends: call
/// it from a test's own thread (or a program's main thread), never from a pool thread that
/// may end early. A test process killed before it can unwind (a signal; `cargo test | head`
/// closing its pipe) must not leave servers running: they would load the machine and skew
/// every later test and benchmark.
pub fn dies_with_its_starter(cmd: &mut Command) {
    let starter = std::process::id();
    // SAFETY: the closure only makes system calls, as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The starter may have died before the request above was made.
            if libc::getppid() as u32 != starter {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Starts the server `cmd` runs, quietly (its output is not the test's) and dying with the
/// test ([`dies_with_its_starter`]); `what` names it, and where it comes from, if it fails.
pub fn spawn_server(cmd: &mut Command, what: &str) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    dies_with_its_starter(cmd);
    cmd.spawn()
        .unwrap_or_else(|err| panic!("{what} does not start: {err}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// The template every test database is copied from, in this test binary.
static MIGRATED_TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// `admin` with its database replaced by `database`, its parameters (`sslmode`, …) kept.
fn database_url(admin: &str, database: &str) -> String {
    let mut url = url::Url::parse(admin).expect("the admin database URL is a URL");
    url.set_path(database);
    url.to_string()
}

/// A database with every migration applied, named after the migrations (versions and
/// checksums), made once for all test binaries: a test's database is a copy of it
/// (`CREATE DATABASE … TEMPLATE`), which costs a file copy where applying the migrations
/// cost a statement each.
async fn migrated_template(admin: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut migrations = std::collections::hash_map::DefaultHasher::new();
    for migration in taskfleet_storage::db::MIGRATOR.iter() {
        (migration.version, &migration.checksum[..]).hash(&mut migrations);
    }
    let template = format!("tf_template_{:016x}", migrations.finish());
    let mut conn = PgConnection::connect(admin)
        .await
        .expect("Postgres answers");
    // Test binaries run side by side: one of them makes the template, the others wait.
    sqlx::query("SELECT pg_advisory_lock(hashtext('taskfleet test template'))")
        .execute(&mut conn)
        .await
        .unwrap();
    // Marked a template only once it is whole, so one left half made is made again.
    let ready: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)",
    )
    .bind(&template)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    if !ready {
        for statement in [
            format!("DROP DATABASE IF EXISTS {template}"),
            format!("CREATE DATABASE {template}"),
        ] {
            sqlx::query(&statement).execute(&mut conn).await.unwrap();
        }
        let db = taskfleet_storage::Db::connect_lazy(&database_url(admin, &template), 1).unwrap();
        db.migrate().await.expect("migrations apply");
        // A template cannot be copied while anyone is connected to it.
        db.pool.close().await;
        sqlx::query(&format!("ALTER DATABASE {template} WITH IS_TEMPLATE true"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtext('taskfleet test template'))")
        .execute(&mut conn)
        .await
        .unwrap();
    template
}

/// One test's private slice of Postgres and Redis, plus the processes it started.
pub struct TestEnv {
    pub database_url: String,
    /// What the processes under test connect to (a [`Proxy`] when the test routes them).
    child_database_url: String,
    child_redis_url: String,
    /// The PEM files processes started get for a `rediss://` `child_redis_url`.
    child_redis_tls: RedisTlsArgs,
    /// The Postgres server the test's database is on, and where it is dropped from.
    admin_database_url: String,
    database: String,
    pub redis_prefix: String,
    pub pool: PgPool,
    /// The test's own connections: `pool` and those a [`taskfleet_storage::Ledger`] needs.
    pub db: taskfleet_storage::Db,
    pub redis: taskfleet_storage::redis::Connection,
    children: Vec<Child>,
    /// Where children's stderr goes once [`TestEnv::capture_logs`] was called.
    log_dir: Option<PathBuf>,
    /// The workers' vector store (lancedb), one per test.
    pub vector_dir: PathBuf,
}

/// The local embedding model `make model` unpacks (the workers load it on their first
/// embed job).
pub fn embed_model_dir() -> PathBuf {
    std::env::var_os("TASKFLEET_EMBED_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../var/models/all-MiniLM-L6-v2")
        })
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        TestEnv::on_redis(&redis_url()).await
    }

    /// A test environment whose fleet uses the Redis at `url` (a cluster's nodes, say).
    pub async fn on_redis(url: &str) -> TestEnv {
        let admin = admin_database_url();
        let template = MIGRATED_TEMPLATE
            .get_or_init(|| migrated_template(&admin))
            .await;
        TestEnv::made(&admin, Some(template), url, RedisTlsArgs::default()).await
    }

    /// A test environment on servers of the test's own (TLS ones, say): its database is
    /// made on the Postgres `admin` leads to (its parameters, `sslmode` and all, kept for
    /// every connection), and migrated; the fleet uses the Redis at `redis_url` with `tls`.
    pub async fn on_servers(admin: &str, redis_url: &str, tls: RedisTlsArgs) -> TestEnv {
        let env = TestEnv::made(admin, None, redis_url, tls).await;
        env.db
            .migrate()
            .await
            .expect("the test's database is migrated");
        env
    }

    /// A fresh database on `admin`'s server, copied from `template` when given, and a
    /// connection to the Redis at `redis_url`.
    async fn made(
        admin: &str,
        template: Option<&str>,
        redis_url: &str,
        redis_tls: RedisTlsArgs,
    ) -> TestEnv {
        let database = format!("tf_test_{}", Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin)
            .await
            .expect("Postgres answers");
        let copied = template.map_or(String::new(), |template| format!(" TEMPLATE {template}"));
        sqlx::query(&format!("CREATE DATABASE {database}{copied}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let database_url = database_url(admin, &database);
        let db = taskfleet_storage::Db::connect_lazy(&database_url, 8).unwrap();
        let redis_config =
            RedisConfig::with_tls_files(redis_url, &redis_tls).expect("the test's TLS files");
        let redis = taskfleet_storage::redis::connect(&redis_config)
            .await
            .expect("Redis answers");
        TestEnv {
            child_database_url: database_url.clone(),
            child_redis_url: redis_url.to_owned(),
            child_redis_tls: redis_tls,
            admin_database_url: admin.to_owned(),
            database_url,
            database,
            redis_prefix: format!("tftest:{}", Uuid::new_v4().simple()),
            pool: db.pool.clone(),
            db,
            redis,
            children: Vec::new(),
            log_dir: None,
            vector_dir: std::env::temp_dir()
                .join(format!("tf-lancedb-{}", Uuid::new_v4().simple())),
        }
    }

    /// Sends the logs (stderr) of processes started from now on to files that
    /// [`TestEnv::logs`] reads; without it they are shown with the test's output.
    pub fn capture_logs(&mut self) {
        // Called again, it starts afresh: the logs read are those of processes started since.
        if let Some(earlier) = self.log_dir.take() {
            let _ = std::fs::remove_dir_all(earlier);
        }
        let dir = std::env::temp_dir().join(format!("tf-logs-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("log directory");
        self.log_dir = Some(dir);
    }

    /// Everything the processes started since [`TestEnv::capture_logs`] have logged so far.
    pub fn logs(&self) -> String {
        let dir = self.log_dir.as_ref().expect("capture_logs was called");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|file| std::fs::read_to_string(file).unwrap())
            .collect()
    }

    fn command(&self, binary_name: &str) -> Command {
        self.command_on(None, binary_name)
    }

    /// A command for one of the binaries, run in the network namespace `host` when given
    /// (a host of a [`netns::Network`]).
    fn command_on(&self, host: Option<&str>, binary_name: &str) -> Command {
        let mut cmd = match host {
            None => Command::new(binary(binary_name)),
            Some(host) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", host]).arg(binary(binary_name));
                cmd
            }
        };
        let RedisTlsArgs {
            ca_file,
            cert_file,
            key_file,
        } = &self.child_redis_tls;
        for (name, file) in [
            ("REDIS_TLS_CA_FILE", ca_file),
            ("REDIS_TLS_CERT_FILE", cert_file),
            ("REDIS_TLS_KEY_FILE", key_file),
        ] {
            if let Some(file) = file {
                cmd.env(name, file);
            }
        }
        cmd.env("DATABASE_URL", &self.child_database_url)
            .env("REDIS_URL", &self.child_redis_url)
            .env("TASKFLEET_REDIS_PREFIX", &self.redis_prefix)
            .env("TASKFLEET_ENCRYPTION_KEY", TEST_ENCRYPTION_KEY)
            .env("TASKFLEET_EMBED_MODEL_DIR", embed_model_dir())
            .env("TASKFLEET_VECTOR_URI", &self.vector_dir)
            .env(
                "RUST_LOG",
                // The Redis cluster client warns of every reconnection to a dead node.
                std::env::var("TEST_LOG")
                    .unwrap_or_else(|_| "warn,redis::cluster_handling=error".into()),
            )
            .stdin(Stdio::null());
        dies_with_its_starter(&mut cmd);
        if let Some(dir) = &self.log_dir {
            let file = dir.join(format!("{binary_name}-{}.log", Uuid::new_v4().simple()));
            cmd.stderr(std::fs::File::create(file).expect("log file"));
        }
        cmd
    }

    /// Routes the Postgres connections of processes started from now on through a proxy.
    pub async fn proxy_postgres(&mut self) -> Proxy {
        let proxy = Proxy::start("127.0.0.1:5432").await;
        self.route_postgres(&format!("127.0.0.1:{}", proxy.port));
        proxy
    }

    /// Has processes started from now on reach the test's database at `address` (a proxy,
    /// a connection pooler).
    pub fn route_postgres(&mut self, address: &str) {
        let (base, database) = self.database_url.rsplit_once('/').unwrap();
        let (scheme_user, _) = base.rsplit_once('@').unwrap();
        self.child_database_url = format!("{scheme_user}@{address}/{database}");
    }

    /// Has processes started from now on show Redis the PEM files `tls` names.
    pub fn route_redis_tls(&mut self, tls: RedisTlsArgs) {
        self.child_redis_tls = tls;
    }

    /// The `DATABASE_URL` processes started now get.
    pub fn child_database_url(&self) -> &str {
        &self.child_database_url
    }

    /// Routes the Redis connections of processes started from now on through a proxy.
    pub async fn proxy_redis(&mut self) -> Proxy {
        let target = redis_url();
        let proxy = Proxy::start(target.trim_start_matches("redis://").trim_end_matches('/')).await;
        self.child_redis_url = format!("redis://127.0.0.1:{}", proxy.port);
        proxy
    }

    /// Deletes every Redis key of this test's fleet: what a Redis restart without
    /// persistence, or a `FLUSHALL`, does to it.
    pub async fn flush_redis(&self) {
        let mut conn = self.redis.clone();
        let keys: Vec<String> = conn.keys(format!("{}:*", self.redis_prefix)).await.unwrap();
        if !keys.is_empty() {
            let () = conn.del(keys).await.unwrap();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, `TERM`) to child `index`.
    pub fn signal(&mut self, index: usize, signal: &str) {
        let pid = self.children[index].id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Kills child `index` with SIGKILL and starts a worker with `args` in its place.
    pub fn restart_worker(&mut self, index: usize, args: &[&str]) {
        self.signal(index, "KILL");
        let _ = self.children[index].wait();
        let fresh = self.start_worker(args);
        self.children.swap(index, fresh);
        self.children.pop();
    }

    /// Events of one job, oldest first: `(event, actor)`.
    pub async fn job_events(&self, job: Uuid) -> Vec<(String, String)> {
        sqlx::query_as("SELECT event, actor FROM all_job_events WHERE job_id = $1 ORDER BY id")
            .bind(job)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// The messages of one job's `job_progress` events, oldest first.
    pub async fn progress_messages(&self, job: Uuid) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT details ->> 'message' FROM all_job_events
             WHERE job_id = $1 AND event = 'job_progress' ORDER BY id",
        )
        .bind(job)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// When a job's events named `event` were recorded, oldest first.
    pub async fn event_times(&self, job: Uuid, event: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
        sqlx::query_scalar(
            "SELECT ts FROM all_job_events WHERE job_id = $1 AND event = $2 ORDER BY id",
        )
        .bind(job)
        .bind(event)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// How many events named `event` the ledger holds.
    pub async fn count_events(&self, event: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM all_job_events WHERE event = $1")
            .bind(event)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Creates an API key for `tenant` with the real `taskfleet-api keys create`.
    pub fn create_key(&self, tenant: &str) -> String {
        self.keys_create(&["--tenant", tenant])
    }

    /// Creates an operator key (every tenant, workers, queue pauses) for `tenant`.
    pub fn create_operator_key(&self, tenant: &str) -> String {
        self.keys_create(&["--tenant", tenant, "--operator"])
    }

    fn keys_create(&self, args: &[&str]) -> String {
        let out = self.api_command(&[&["keys", "create"], args].concat());
        assert!(out.status.success(), "keys create failed");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Runs one of `taskfleet-api`'s admin commands (`keys revoke KEY`, …) to its end.
    pub fn api_command(&self, args: &[&str]) -> std::process::Output {
        self.api_command_env(args, &[])
    }

    /// [`TestEnv::api_command`] with extra environment variables.
    pub fn api_command_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        self.command("taskfleet-api")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("taskfleet-api runs")
    }

    /// Starts `taskfleet-api` on a free port and waits until it answers.
    pub async fn start_api(&mut self, extra_env: &[(&str, &str)]) -> Api {
        let (_, api) = self.spawn_api(extra_env);
        api.wait_until_answering().await;
        api
    }

    /// Starts `taskfleet-api` on a free port without waiting for it; returns its index in
    /// `children` and how to reach it.
    pub fn spawn_api(&mut self, extra_env: &[(&str, &str)]) -> (usize, Api) {
        self.spawn_api_on(None, "127.0.0.1", extra_env)
    }

    /// Starts `taskfleet-api` on the host `host` (a network namespace), listening on `ip`,
    /// and waits until it answers.
    pub async fn start_api_on(&mut self, host: &str, ip: &str) -> Api {
        let (_, api) = self.spawn_api_on(Some(host), ip, &[]);
        api.wait_until_answering().await;
        api
    }

    fn spawn_api_on(
        &mut self,
        host: Option<&str>,
        ip: &str,
        extra_env: &[(&str, &str)],
    ) -> (usize, Api) {
        let addr = format!("{ip}:{}", free_port());
        let mut cmd = self.command_on(host, "taskfleet-api");
        cmd.env("TASKFLEET_API_ADDR", &addr);
        // Tests and the benchmark drive one key far past a client's limits; the rate limit
        // tests set their own.
        for class in ["SUBMIT", "READ", "STREAM"] {
            cmd.env(format!("TASKFLEET_RATE_LIMIT_{class}"), "off");
        }
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        self.children
            .push(cmd.spawn().expect("taskfleet-api starts"));
        let api = Api {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        };
        (self.children.len() - 1, api)
    }

    /// Starts a `taskfleet-worker` with extra flags; returns its index in `children`.
    pub fn start_worker(&mut self, args: &[&str]) -> usize {
        self.start_worker_env(args, &[])
    }

    /// [`TestEnv::start_worker`] with extra environment variables.
    pub fn start_worker_env(&mut self, args: &[&str], env: &[(&str, &str)]) -> usize {
        self.start_worker_on(None, args, env)
    }

    /// [`TestEnv::start_worker_env`] on the host `host` (a network namespace) when given.
    pub fn start_worker_on(
        &mut self,
        host: Option<&str>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> usize {
        let child = self
            .command_on(host, "taskfleet-worker")
            .args(args)
            .envs(env.iter().copied())
            .spawn()
            .expect("taskfleet-worker starts");
        self.children.push(child);
        self.children.len() - 1
    }

    /// The process id of child `index`.
    pub fn pid(&self, index: usize) -> u32 {
        self.children[index].id()
    }

    /// True while the child process `index` has not exited.
    pub fn is_running(&mut self, index: usize) -> bool {
        self.children[index]
            .try_wait()
            .expect("wait on child")
            .is_none()
    }

    /// Sends SIGTERM to child `index` and waits for it to exit; returns its exit status.
    pub fn terminate(&mut self, index: usize) -> std::process::ExitStatus {
        let pid = self.children[index].id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        self.children[index].wait().expect("child exits")
    }

    /// Jobs of the ledger in `state`.
    pub async fn count_state(&self, state: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = $1")
            .bind(state)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// How many times each job of the ledger that was not cancelled succeeded
    /// (`job_succeeded` events): exactly once each, whatever ran twice.
    pub async fn successes_per_job(&self) -> Vec<i64> {
        sqlx::query_scalar(
            "SELECT count(e.id) FROM jobs j
             LEFT JOIN all_job_events e ON e.job_id = j.id AND e.event = 'job_succeeded'
             WHERE j.state <> 'cancelled'
             GROUP BY j.id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// How many deliveries wait in `queue`'s Redis list.
    pub async fn redis_waiting_len(&self, queue: taskfleet_jobs::Queue) -> i64 {
        let mut conn = self.redis.clone();
        let keys = taskfleet_storage::redis::Keys::new(&self.redis_prefix);
        conn.llen(keys.queue_list(queue)).await.unwrap()
    }

    async fn cleanup(&mut self) {
        let mut conn = self.redis.clone();
        let keys: Vec<String> = conn
            .keys(format!("{}:*", self.redis_prefix))
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = conn.del(keys).await;
        }
        self.db.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_database_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .execute(&mut admin)
            .await;
        }
        if let Some(dir) = &self.log_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(&self.vector_dir);
    }

    /// Stops every process and removes the test's database and Redis keys.
    pub async fn finish(mut self) {
        self.kill_children();
        self.cleanup().await;
    }

    fn kill_children(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for TestEnv {
    // A failing test still stops its processes; `finish` also removes its data.
    fn drop(&mut self) {
        self.kill_children();
    }
}

/// A client of one running API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    /// Waits until the API answers `/healthz`.
    async fn wait_until_answering(&self) {
        wait_until(
            Duration::from_secs(30),
            "the API answers /healthz",
            || async { self.http.get(self.url("/healthz")).send().await.is_ok() },
        )
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, key, path, Some(body))
            .await
    }

    pub async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, key, path, None).await
    }

    pub async fn patch(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, key, path, Some(body))
            .await
    }

    pub async fn delete(&self, key: &str, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, key, path, None).await
    }

    /// Sends a request with `key`, and `body` as JSON; the status and the JSON answer
    /// (`null` when there is none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        key: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let resp = request.send().await.expect("request sent");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Submits one job and returns its id; panics unless the API answers 201.
    pub async fn submit(&self, key: &str, job: Value) -> Uuid {
        let (status, body) = self.post(key, "/v1/jobs", &job).await;
        assert_eq!(status, 201, "submitting {job}: {body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    /// Submits a batch and returns the API's answer; panics unless it is 201.
    pub async fn submit_batch(&self, key: &str, jobs: &[Value]) -> Value {
        let (status, body) = self
            .post(key, "/v1/jobs/batch", &serde_json::json!({ "jobs": jobs }))
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Submits `count` `executor.run sleep` jobs of up to `max_ms` each (at random), with
    /// attempts to spare for tests that kill what runs them, in batches of 1,000.
    pub async fn submit_sleeps(&self, key: &str, count: usize, max_ms: u64) {
        use rand::Rng;
        let mut rng = rand::rng();
        for start in (0..count).step_by(1_000) {
            let jobs: Vec<_> = (start..count.min(start + 1_000))
                .map(|_| {
                    serde_json::json!({"kind": "executor.run", "tool": "sleep",
                        "args": {"ms": rng.random_range(0..=max_ms)}, "max_attempts": 25})
                })
                .collect();
            self.submit_batch(key, &jobs).await;
        }
    }

    /// Polls a job until it reaches a terminal state and returns it.
    pub async fn wait_finished(&self, key: &str, id: Uuid, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, job) = self.get(key, &format!("/v1/jobs/{id}")).await;
            assert_eq!(status, 200, "{job}");
            if matches!(
                job["state"].as_str(),
                Some("succeeded" | "dead" | "cancelled")
            ) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} not finished: {job}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The wake-up a leader's loop gets from Postgres notifications
/// (`taskfleet_worker::notifications::woken_by`), fed by the listeners `listen` makes; returns
/// once listening has begun (its first wake taken). Cancel the token to stop listening.
pub async fn notifications<L, F>(
    listen: L,
) -> (
    Arc<tokio::sync::Notify>,
    tokio_util::sync::CancellationToken,
)
where
    L: Fn() -> F + Send + 'static,
    F: Future<Output = sqlx::Result<sqlx::postgres::PgListener>> + Send + 'static,
{
    let stop = tokio_util::sync::CancellationToken::new();
    let woken = taskfleet_worker::notifications::woken_by(listen, &stop);
    tokio::time::timeout(Duration::from_secs(10), woken.notified())
        .await
        .expect("listening begins");
    (woken, stop)
}

/// Polls `check` until it is true, failing the test after `within`.
/// Waits until the worker whose health server is at `addr` answers `/readyz` with 200.
pub async fn wait_worker_ready(addr: &str, within: Duration) {
    let readyz = format!("http://{addr}/readyz");
    let http = reqwest::Client::new();
    wait_until(within, "the worker is ready", || async {
        matches!(http.get(&readyz).send().await, Ok(r) if r.status() == 200)
    })
    .await;
}

/// Asserts the worker whose health server is at `addr` is not ready, and that its
/// `/readyz` answer names `failing` (a check, such as "vector store").
pub async fn assert_worker_not_ready(addr: &str, failing: &str) {
    let answer = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "not_ready", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains(failing),
        "{body}"
    );
}

pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_some(within, what, || {
        let checked = check();
        async move { checked.await.then_some(()) }
    })
    .await
}

/// Polls `check` until it gives a value and returns it, failing the test after `within`.
pub async fn wait_for_some<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A TCP proxy in front of Postgres or Redis that a test can cut or stall, to take the
/// service away from the processes under test (and only from them) and give it back.
pub struct Proxy {
    pub port: u16,
    link: tokio::sync::watch::Sender<Link>,
}

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Connections are dropped and new ones refused: the service is down.
    Cut,
    /// Connections stay open and nothing passes: the service hangs.
    Stalled,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        Proxy::start_on("127.0.0.1", target).await
    }

    /// A proxy to `target` listening on `ip`, a free port.
    pub async fn start_on(ip: &str, target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, link_rx) = tokio::sync::watch::channel(Link::Up);
        let target = target.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let (target, mut link_rx) = (target.clone(), link_rx.clone());
                tokio::spawn(async move {
                    let at_accept = *link_rx.borrow();
                    match at_accept {
                        Link::Cut => return, // refused: dropped at once
                        Link::Stalled => {
                            let _ = link_rx.wait_for(|link| *link != Link::Stalled).await;
                            return;
                        }
                        Link::Up => {}
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = link_rx.wait_for(|link| *link != Link::Up) => {}
                    }
                    // Stalled: hold both ends open, silent, until the link changes again.
                    if *link_rx.borrow() == Link::Stalled {
                        let _ = link_rx.wait_for(|link| *link != Link::Stalled).await;
                    }
                });
            }
        });
        Proxy { port, link }
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.link.send_replace(Link::Cut);
    }

    /// Holds every connection open with nothing passing, new ones too, as a hung server or
    /// a lost network would.
    pub fn stall(&self) {
        self.link.send_replace(Link::Stalled);
    }

    /// Lets new connections through again; connections cut or stalled meanwhile are gone.
    pub fn restore(&self) {
        self.link.send_replace(Link::Up);
    }
}

/// One message of a Server-Sent Events stream, its data decoded as `D`.
#[derive(Debug, Clone, PartialEq)]
pub struct SseMessage<D = Value> {
    pub id: i64,
    pub event: String,
    pub data: D,
}

/// A client reading an SSE response message by message.
pub struct Sse {
    response: reqwest::Response,
    /// Bytes as received: a chunk may end inside a character, so text is decoded a whole
    /// message at a time.
    buffer: Vec<u8>,
    /// Where the unread part of `buffer` begins: messages are read in place and the buffer
    /// is compacted once per chunk, not shifted once per message.
    read: usize,
}

impl Api {
    /// Opens an SSE stream; returns the HTTP status and, for a 200, the stream.
    pub async fn sse(
        &self,
        key: &str,
        path: &str,
        last_event_id: Option<i64>,
    ) -> (u16, Option<Sse>) {
        let mut request = self.http.get(self.url(path)).bearer_auth(key);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        Self::open_sse(request).await
    }

    /// POSTs an empty body to `path` asking for an event stream (`Accept:
    /// text/event-stream`); returns the HTTP status and, for a 200, the stream.
    pub async fn post_sse(&self, key: &str, path: &str) -> (u16, Option<Sse>) {
        let request = self
            .http
            .post(self.url(path))
            .bearer_auth(key)
            .header("Accept", "text/event-stream");
        Self::open_sse(request).await
    }

    async fn open_sse(request: reqwest::RequestBuilder) -> (u16, Option<Sse>) {
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        if status != 200 {
            return (status, None);
        }
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        (
            status,
            Some(Sse {
                response,
                buffer: Vec::new(),
                read: 0,
            }),
        )
    }
}

impl Sse {
    /// The next message, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<SseMessage> {
        self.next_as().await
    }

    /// [`Sse::next`] with the data decoded as `D`: a reader that needs a field or two (the
    /// benchmark's 500 clients) skips building the whole JSON value.
    pub async fn next_as<D: serde::de::DeserializeOwned>(&mut self) -> Option<SseMessage<D>> {
        loop {
            if let Some(end) = memchr::memmem::find(&self.buffer[self.read..], b"\n\n") {
                let block = std::str::from_utf8(&self.buffer[self.read..self.read + end])
                    .expect("SSE messages are UTF-8");
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                self.read += end + 2;
                // Comment-only blocks are keep-alives.
                if let Some(id) = id {
                    let data = serde_json::from_str(&data).expect("event data is JSON");
                    return Some(SseMessage { id, event, data });
                }
                continue;
            }
            self.buffer.drain(..self.read);
            self.read = 0;
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Every message until the server ends the stream, failing the test after `within`.
    pub async fn collect(mut self, within: Duration) -> Vec<SseMessage> {
        let mut all = Vec::new();
        tokio::time::timeout(within, async {
            while let Some(message) = self.next().await {
                all.push(message);
            }
        })
        .await
        .expect("the stream ended in time");
        all
    }
}

impl TestEnv {
    /// The fleet's Redis key names under this test's prefix.
    pub fn keys(&self) -> taskfleet_storage::redis::Keys {
        taskfleet_storage::redis::Keys::new(&self.redis_prefix)
    }

    /// The index of the child process that holds the leader lease.
    pub async fn leader_index(&self) -> Option<usize> {
        let mut conn = self.redis.clone();
        let key = self.keys().leader_lease();
        let holder = taskfleet_storage::Lease::holder(&mut conn, &key)
            .await
            .unwrap();
        self.worker_index(&holder?)
    }

    /// The child running the worker process called `name` (`host-pid-nonce`).
    pub fn worker_index(&self, name: &str) -> Option<usize> {
        let pid: u32 = name.rsplit('-').nth(1)?.parse().ok()?;
        self.children.iter().position(|child| child.id() == pid)
    }
}

/// Runs a dispatcher's round over the executor queue and starts, as `worker`, the deliveries
/// of `ids` it made (each must be due): the jobs' deliveries, in the order of `ids`. Jobs of
/// the queue not among `ids` are left dispatched and not started.
pub async fn start_due(
    ledger: &taskfleet_storage::Ledger,
    ids: &[Uuid],
    worker: &str,
) -> Vec<taskfleet_jobs::Dispatch> {
    let mut delivered = ledger
        .dispatch_due(taskfleet_jobs::Queue::Executor, 10_000, "dispatcher")
        .await
        .unwrap();
    let deliveries: Vec<taskfleet_jobs::Dispatch> = ids
        .iter()
        .map(|id| {
            let at = delivered
                .iter()
                .position(|delivery| delivery.job_id == *id)
                .unwrap_or_else(|| panic!("job {id} was not dispatched"));
            delivered.swap_remove(at)
        })
        .collect();
    let started = ledger
        .start_many(&start_requests(&deliveries), worker)
        .await
        .unwrap();
    assert!(started.iter().all(Option::is_some), "every delivery starts");
    deliveries
}

/// The starts of deliveries, as a worker asks the ledger for them.
pub fn start_requests(
    deliveries: &[taskfleet_jobs::Dispatch],
) -> Vec<taskfleet_jobs::StartRequest> {
    deliveries
        .iter()
        .map(taskfleet_jobs::Dispatch::start_request)
        .collect()
}

/// The end of a delivery's attempt, as its worker records it.
pub fn finish_of(
    delivery: &taskfleet_jobs::Dispatch,
    worker: &str,
    outcome: taskfleet_storage::Outcome,
) -> taskfleet_storage::Finish {
    taskfleet_storage::Finish {
        id: delivery.job_id,
        epoch: delivery.epoch,
        worker: worker.to_owned(),
        outcome,
    }
}
