//! The `taskfleet` command line against a live stack (the real API and worker on Redis and
//! Postgres): submitting and waiting with its exit codes, operating jobs, errors in plain
//! words, profiles, a tail that resumes after a lost connection, schedules, connectors,
//! tasks, chat, completions, and `top` and `submit --wait` on a real terminal (tmux).

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use taskfleet_tests::{
    Api, Proxy, TestEnv, binary,
    connector_fleet::{ConnectorFleet, LLM_MODEL},
    dies_with_its_starter,
    fake_providers::FakeProviders,
    free_port, json,
    terminal::Terminal,
    wait_until,
};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(60);

/// What a run of `taskfleet` did.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self) -> Ran {
        assert_eq!(
            self.code, 0,
            "taskfleet failed: {}{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts the exit code and that the error is said in words, not a backtrace.
    fn failed_with(self, code: i32) -> Ran {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.starts_with("error: ") || code == 1 || code == 3,
            "{}",
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("backtrace"),
            "{}",
            self.stderr
        );
        self
    }

    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }
}

/// A config directory of the test's own, so no profile of the machine's user is read.
fn config_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("taskfleet-cli-{}", Uuid::new_v4()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `taskfleet` aimed at `url` with `key` (none: no key in its environment).
fn taskfleet(url: &str, key: Option<&str>, config: &PathBuf) -> Command {
    let mut cmd = Command::new(binary("taskfleet"));
    cmd.env("TASKFLEET_URL", url)
        .env("XDG_CONFIG_HOME", config)
        .env_remove("TASKFLEET_KEY")
        .env_remove("TASKFLEET_PROFILE")
        .env("NO_COLOR", "1");
    if let Some(key) = key {
        cmd.env("TASKFLEET_KEY", key);
    }
    cmd
}

fn run(cmd: &mut Command, args: &[&str]) -> Ran {
    run_with_input(cmd, args, "")
}

fn run_with_input(cmd: &mut Command, args: &[&str], input: &str) -> Ran {
    let output = assert_cmd::Command::from_std(std::mem::replace(cmd, Command::new("true")))
        .args(args)
        .write_stdin(input)
        .timeout(WITHIN)
        .output()
        .expect("taskfleet runs");
    Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// An API and a worker serving `worker_queues` (with fault injection), a key of tenant
/// `acme`, and a config directory.
struct Stack {
    env: TestEnv,
    api: Api,
    key: String,
    config: PathBuf,
}

impl Stack {
    async fn start(worker_queues: &str) -> Stack {
        let mut env = TestEnv::new().await;
        let api = env
            .start_api(&[("TASKFLEET_FAULT_INJECTION", "true")])
            .await;
        env.start_worker(&["--queues", worker_queues, "--fault-injection"]);
        let key = env.create_key("acme");
        Stack {
            env,
            api,
            key,
            config: config_dir(),
        }
    }

    fn cli(&self) -> Command {
        taskfleet(&self.api.base, Some(&self.key), &self.config)
    }

    fn cli_as(&self, key: &str) -> Command {
        taskfleet(&self.api.base, Some(key), &self.config)
    }

    async fn finish(self) {
        let _ = fs::remove_dir_all(&self.config);
        self.env.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_and_wait_prints_the_result_and_exits_by_how_the_job_ended() {
    let stack = Stack::start("executor").await;

    // Success: the id first, then the result; the ledger agrees.
    let ran = run(
        &mut stack.cli(),
        &[
            "submit",
            "executor.run",
            "--tool",
            "sleep",
            "--arg",
            "ms=300",
            "--wait",
        ],
    )
    .ok();
    let mut lines = ran.stdout.lines();
    let id: Uuid = lines
        .next()
        .unwrap()
        .parse()
        .expect("the job id comes first");
    let result: Value = serde_json::from_str(&lines.collect::<Vec<_>>().join("\n")).unwrap();
    assert_eq!(result, json!({"slept_ms": 300}));
    let (_, job) = stack.api.get(&stack.key, &format!("/v1/jobs/{id}")).await;
    assert_eq!(job["state"], "succeeded");

    // A tool's text comes as text, from a file or from standard input.
    let file = stack.config.join("notes.md");
    fs::write(&file, "#  Notes\n*  one\n").unwrap();
    let format = [
        "submit",
        "executor.run",
        "--tool",
        "markdown.format",
        "--wait",
    ];
    let from_file = format!("@{}", file.display());
    let ran = run(
        &mut stack.cli(),
        &[&format[..], &["--input", &from_file]].concat(),
    )
    .ok();
    assert!(ran.stdout.contains("# Notes\n\n- one\n"), "{}", ran.stdout);
    let piped = [&format[..], &["--input", "-", "--json"]].concat();
    let ran = run_with_input(&mut stack.cli(), &piped, "#  Piped\n").ok();
    assert_eq!(ran.json_lines()[0]["result"]["markdown"], "# Piped\n");

    // Failure: exit 1 and the job's error.
    let ran = run(
        &mut stack.cli(),
        &[
            "submit",
            "executor.run",
            "--tool",
            "fault",
            "--arg",
            "mode=fail",
            "--max-attempts",
            "1",
            "--wait",
        ],
    )
    .failed_with(1);
    assert!(
        ran.stderr
            .contains("failed after 1 attempt(s): injected failure on attempt 1"),
        "{}",
        ran.stderr
    );

    // Cancelled while waited for: exit 3.
    let mut waiting = stack.cli();
    waiting
        .args([
            "submit",
            "executor.run",
            "--tool",
            "sleep",
            "--arg",
            "ms=60000",
            "--wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    dies_with_its_starter(&mut waiting);
    let mut waiting = waiting.spawn().unwrap();
    let mut first = String::new();
    BufReader::new(waiting.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let id = first.trim().to_owned();
    wait_until(WITHIN, "the job runs", || async {
        stack.api.get(&stack.key, &format!("/v1/jobs/{id}")).await.1["state"] == "running"
    })
    .await;
    let ran = run(&mut stack.cli(), &["cancel", &id]).ok();
    assert!(ran.stdout.contains("asked to stop"), "{}", ran.stdout);
    let status = tokio::task::spawn_blocking(move || waiting.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(3), "a cancelled job's wait exits 3");

    // The same idempotency key twice is one job.
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let args = [
                "submit",
                "executor.run",
                "--tool",
                "noop",
                "--idempotency-key",
                "nightly",
            ];
            run(&mut stack.cli(), &args).ok().stdout
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_listed_shown_cancelled_and_retried() {
    let stack = Stack::start("executor").await;
    let ids: Vec<String> = (0..3)
        .map(|_| {
            run(
                &mut stack.cli(),
                &["submit", "executor.run", "--tool", "noop"],
            )
            .ok()
            .stdout
            .trim()
            .to_owned()
        })
        .collect();
    for id in &ids {
        id.parse::<Uuid>()
            .expect("without --wait, submit prints the id alone");
        stack
            .api
            .wait_finished(&stack.key, id.parse().unwrap(), WITHIN)
            .await;
    }

    let listed = run(
        &mut stack.cli(),
        &[
            "jobs",
            "--state",
            "succeeded",
            "--queue",
            "executor",
            "--json",
        ],
    )
    .ok()
    .json_lines();
    let listed_ids: Vec<&str> = listed
        .iter()
        .map(|job| job["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed_ids,
        ids.iter().rev().map(String::as_str).collect::<Vec<_>>(),
        "newest first"
    );
    let table = run(&mut stack.cli(), &["jobs", "--limit", "2"]).ok().stdout;
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(
        table.lines().count(),
        3,
        "a header and two rows, paged by --limit: {table}"
    );
    assert!(
        table.contains(&ids[2]) && table.contains("executor.run noop"),
        "{table}"
    );

    let shown = run(&mut stack.cli(), &["job", &ids[0]]).ok().stdout;
    for part in [
        "succeeded",
        "timeline",
        "job_enqueued",
        "job_started",
        "job_succeeded",
    ] {
        assert!(shown.contains(part), "`job` shows {part}: {shown}");
    }
    let shown = run(&mut stack.cli(), &["job", &ids[0], "--json"])
        .ok()
        .json_lines()
        .remove(0);
    let events: Vec<&str> = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events.first(), Some(&"job_enqueued"));
    assert_eq!(events.last(), Some(&"job_succeeded"));

    // A finished job cannot be cancelled: the API's words, exit 4.
    let ran = run(&mut stack.cli(), &["cancel", &ids[0]]).failed_with(4);
    assert!(
        ran.stderr.contains(&format!(
            "job {} is succeeded and cannot be cancelled (409 invalid_state)",
            ids[0]
        )),
        "{}",
        ran.stderr
    );
    // A job for later is cancelled at once, then retried.
    let later = run(
        &mut stack.cli(),
        &["submit", "executor.run", "--tool", "noop", "--run-at", "1h"],
    )
    .ok()
    .stdout
    .trim()
    .to_owned();
    assert!(
        run(&mut stack.cli(), &["cancel", &later])
            .ok()
            .stdout
            .contains("cancelled")
    );
    let ran = run(&mut stack.cli(), &["retry", &later]).ok();
    assert!(ran.stdout.contains("is queued again"), "{}", ran.stdout);

    // Another tenant's job does not exist for this key.
    let other = stack.env.create_key("globex");
    let ran = run(&mut stack.cli_as(&other), &["job", &ids[0]]).failed_with(4);
    assert!(ran.stderr.contains("404 not_found"), "{}", ran.stderr);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_said_in_plain_words_with_an_exit_code_for_each_kind() {
    let stack = Stack::start("executor").await;
    let reader = stack
        .env
        .api_command(&["keys", "create", "--tenant", "acme", "--scope", "read"]);
    let reader = String::from_utf8(reader.stdout).unwrap().trim().to_owned();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let unreachable = format!("could not reach {nowhere}: Connection refused");
    let cases: [(Command, &[&str], i32, &str); 11] = [
        // The API refuses: its message and its code, exit 4.
        (
            stack.cli(),
            &["submit", "executor.run"],
            4,
            "missing field `tool` (422 invalid_payload)",
        ),
        (
            stack.cli(),
            &["jobs", "--state", "finished"],
            4,
            "(400 bad_request)",
        ),
        (
            stack.cli_as(&reader),
            &["submit", "executor.run", "--tool", "noop"],
            4,
            "(403 forbidden)",
        ),
        (
            stack.cli(),
            &["queues", "pause", "executor"],
            4,
            "this needs an operator key",
        ),
        // No API there: exit 5, said plainly.
        (
            taskfleet(&nowhere, Some(&stack.key), &stack.config),
            &["jobs"],
            5,
            &unreachable,
        ),
        // The command line is wrong: exit 2, before anything is sent.
        (
            taskfleet(&stack.api.base, None, &stack.config),
            &["jobs"],
            2,
            "no API key",
        ),
        (
            stack.cli(),
            &[
                "submit",
                "executor.run",
                "--tool",
                "sleep",
                "--arg",
                "check",
            ],
            2,
            "--arg check is not K=V",
        ),
        (
            stack.cli(),
            &[
                "submit",
                "executor.run",
                "--tool",
                "noop",
                "--run-at",
                "soon",
            ],
            2,
            "neither an RFC 3339 time",
        ),
        (
            stack.cli(),
            &[
                "submit",
                "executor.run",
                "--tool",
                "markdown.format",
                "--input",
                "@/nonexistent.md",
            ],
            2,
            "reading /nonexistent.md",
        ),
        (
            stack.cli(),
            &["frobnicate"],
            2,
            "unrecognized subcommand 'frobnicate'",
        ),
        (stack.cli(), &["job", "../queues"], 2, "not an id"),
    ];
    for (mut cli, args, code, said) in cases {
        let ran = run(&mut cli, args).failed_with(code);
        assert!(
            ran.stderr.contains(said),
            "{args:?} says {said:?}: {}",
            ran.stderr
        );
    }

    // A revoked key is told as such, with what to do.
    let revoked = stack.env.create_key("acme");
    run(&mut stack.cli_as(&revoked), &["jobs"]).ok();
    assert!(
        stack
            .env
            .api_command(&["keys", "revoke", &revoked])
            .status
            .success()
    );
    let mut ran = None;
    wait_until(WITHIN, "the revoked key is refused", || {
        let attempt = run(&mut stack.cli_as(&revoked), &["jobs"]);
        let refused = attempt.code == 4;
        ran = Some(attempt);
        async move { refused }
    })
    .await;
    let ran = ran.unwrap().failed_with(4);
    assert!(
        ran.stderr
            .contains("unknown, revoked or expired API key (401 unauthorized)"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("taskfleet login"), "{}", ran.stderr);
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn login_keeps_a_private_profile_that_later_commands_use() {
    let stack = Stack::start("executor").await;
    let mut login = taskfleet(&stack.api.base, None, &stack.config);
    let ran = run_with_input(&mut login, &["login"], &format!("{}\n", stack.key)).ok();
    assert!(
        ran.stdout
            .contains("as tenant acme (tenant key); profile 'default' saved"),
        "{}",
        ran.stdout
    );
    let file = stack.config.join("taskfleet/config.toml");
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );

    assert!(!ran.stdout.contains(&stack.key) && !ran.stderr.contains(&stack.key));

    // Neither address nor key in the environment: the profile has both.
    let bare = || {
        let mut bare = Command::new(binary("taskfleet"));
        bare.env("XDG_CONFIG_HOME", &stack.config)
            .env_remove("TASKFLEET_URL")
            .env_remove("TASKFLEET_KEY")
            .env_remove("TASKFLEET_PROFILE");
        bare
    };
    run(&mut bare(), &["jobs"]).ok();

    // The profile's key goes to the profile's address only.
    let elsewhere = "http://127.0.0.1:1";
    let ran = run(&mut taskfleet(elsewhere, None, &stack.config), &["jobs"]).failed_with(2);
    assert!(
        ran.stderr.contains(&format!(
            "no API key for {elsewhere}: profile 'default' holds the key of {}",
            stack.api.base
        )),
        "{}",
        ran.stderr
    );

    // A key the API refuses is not kept; an unknown profile is named.
    let before = fs::read_to_string(&file).unwrap();
    let mut login = taskfleet(&stack.api.base, None, &stack.config);
    run(
        &mut login,
        &["login", "--profile", "staging", "--key", "tfk_not_a_key"],
    )
    .failed_with(4);
    assert_eq!(fs::read_to_string(&file).unwrap(), before);
    // A profile named is used whole, whatever the environment says.
    let mut elsewhere_env = taskfleet(elsewhere, Some("tfk_other"), &stack.config);
    run(&mut elsewhere_env, &["jobs", "--profile", "default"]).ok();
    let ran = run(&mut bare(), &["jobs", "--profile", "staging"]).failed_with(2);
    assert!(
        ran.stderr.contains("no profile 'staging'"),
        "{}",
        ran.stderr
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_resumes_after_a_lost_connection_without_gaps_or_repeats() {
    let stack = Stack::start("executor").await;
    let address = stack.api.base.trim_start_matches("http://").to_owned();
    let proxy = Proxy::start(&address).await;
    let through_proxy = format!("http://127.0.0.1:{}", proxy.port);
    // From the first event on, so the test need not guess when the stream has opened.
    let (mut tail, lines, notes) = spawn_tail(&through_proxy, &stack.key, &stack.config, Some(0));

    let mut seen: Vec<Value> = Vec::new();
    submit_and_see(&stack.api, &stack.key, &lines, &mut seen, 3).await;
    proxy.cut();
    // Events while the tail is cut off arrive once it is back.
    for _ in 0..3 {
        stack
            .api
            .submit(&stack.key, json!({"kind": "executor.run", "tool": "noop"}))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.restore();
    submit_and_see(&stack.api, &stack.key, &lines, &mut seen, 3).await;

    let seqs = assert_every_event_once(&stack.env, &seen).await;
    let said: Vec<String> = notes.try_iter().collect();
    assert!(
        said.iter()
            .any(|line| line.contains("connection lost") && line.contains("resuming after event")),
        "{said:?}"
    );
    let _ = tail.kill();
    let _ = tail.wait();

    // A later tail goes on from where an earlier one stopped.
    let last = *seqs.last().unwrap();
    let id = stack
        .api
        .submit(&stack.key, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    stack.api.wait_finished(&stack.key, id, WITHIN).await;
    let mut tail = stack.cli();
    tail.args([
        "tail",
        "--json",
        "--since",
        &last.to_string(),
        "--event",
        "job_succeeded",
    ])
    .stdout(Stdio::piped());
    dies_with_its_starter(&mut tail);
    let mut tail = tail.spawn().unwrap();
    let lines = follow(tail.stdout.take().unwrap());
    let event: Value = serde_json::from_str(&lines.recv_timeout(WITHIN).unwrap()).unwrap();
    assert_eq!(event["job_id"], id.to_string());
    let _ = tail.kill();
    let _ = tail.wait();
    stack.finish().await;
}

/// `taskfleet tail --queue executor --json` through `url`, after event `since` when given:
/// the child, its lines and its notes.
fn spawn_tail(
    url: &str,
    key: &str,
    config: &PathBuf,
    since: Option<i64>,
) -> (
    std::process::Child,
    mpsc::Receiver<String>,
    mpsc::Receiver<String>,
) {
    let mut tail = taskfleet(url, Some(key), config);
    tail.args(["tail", "--queue", "executor", "--json"])
        .args(since.map(|since| format!("--since={since}")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    dies_with_its_starter(&mut tail);
    let mut tail = tail.spawn().unwrap();
    let lines = follow(tail.stdout.take().unwrap());
    let notes = follow(tail.stderr.take().unwrap());
    (tail, lines, notes)
}

/// Submits `count` `noop` jobs and waits until the tail's `lines` have shown each of them
/// succeed; every event read is added to `seen`.
async fn submit_and_see(
    api: &Api,
    key: &str,
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<Value>,
    count: usize,
) {
    let mut ids = Vec::new();
    for _ in 0..count {
        let id = api
            .submit(key, json!({"kind": "executor.run", "tool": "noop"}))
            .await;
        ids.push(id.to_string());
    }
    wait_until(WITHIN, "the tail shows every job succeed", || {
        seen.extend(
            lines
                .try_iter()
                .map(|line| serde_json::from_str::<Value>(&line).unwrap()),
        );
        let done = ids.iter().all(|id| {
            seen.iter()
                .any(|e| e["job_id"] == id.as_str() && e["event"] == "job_succeeded")
        });
        async move { done }
    })
    .await;
}

/// Checks that `seen` holds every event of the executor queue's jobs, in order, none twice;
/// returns their sequence numbers.
async fn assert_every_event_once(env: &TestEnv, seen: &[Value]) -> Vec<i64> {
    let seqs: Vec<i64> = seen.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "no event twice, in order: {seqs:?}"
    );
    let (all,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM all_job_events e JOIN jobs j ON j.id = e.job_id
         WHERE j.queue = 'executor'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        seen.len() as i64,
        all,
        "every event of the queue's jobs, none missed"
    );
    seqs
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_waits_out_a_rate_limit_and_a_server_error_then_resumes() {
    let mut env = TestEnv::new().await;
    // The API's warnings while its Postgres is away are not the test's output.
    env.capture_logs();
    env.start_worker(&["--queues", "executor"]);
    // The API reaches Postgres through a proxy the test cuts (503s), and lets a key open
    // one stream every 5 s (a 429 with Retry-After for a quick reconnection).
    let postgres = env.proxy_postgres().await;
    let api = env
        .start_api(&[("TASKFLEET_RATE_LIMIT_STREAM", "12/m:1")])
        .await;
    let key = env.create_key("acme");
    let config = config_dir();
    let proxy = Proxy::start(api.base.trim_start_matches("http://")).await;
    let (mut tail, lines, notes) = spawn_tail(
        &format!("http://127.0.0.1:{}", proxy.port),
        &key,
        &config,
        Some(0),
    );
    let mut seen: Vec<Value> = Vec::new();
    submit_and_see(&api, &key, &lines, &mut seen, 2).await;

    // Broken within 5 s of opening: the reconnection is refused until the limit allows it.
    cut_briefly(&proxy).await;
    wait_to_hear(&notes, "more stream requests than it may").await;
    submit_and_see(&api, &key, &lines, &mut seen, 2).await;

    // The API without its ledger: the reconnection's replay answers 503 until it is back.
    postgres.cut();
    cut_briefly(&proxy).await;
    wait_to_hear(&notes, "the job ledger (Postgres) is unavailable").await;
    postgres.restore();
    submit_and_see(&api, &key, &lines, &mut seen, 2).await;
    assert_every_event_once(&env, &seen).await;
    assert_eq!(tail.try_wait().unwrap(), None, "the tail ran on throughout");
    let _ = tail.kill();
    let _ = tail.wait();
    let _ = fs::remove_dir_all(&config);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tail_broken_before_its_first_event_resumes_from_where_its_stream_began() {
    let stack = Stack::start("executor").await;
    let proxy = Proxy::start(stack.api.base.trim_start_matches("http://")).await;
    let through_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let (mut tail, lines, notes) = spawn_tail(&through_proxy, &stack.key, &stack.config, None);
    wait_until(WITHIN, "the tail's stream is open", || async {
        let metrics = stack.api.http.get(stack.api.url("/metrics")).send().await;
        let metrics = metrics.unwrap().text().await.unwrap();
        metrics
            .lines()
            .any(|line| line == "taskfleet_sse_clients 1")
    })
    .await;

    // Cut before any event: the jobs that run meanwhile are shown once the link is back.
    proxy.cut();
    for _ in 0..3 {
        let id = stack
            .api
            .submit(&stack.key, json!({"kind": "executor.run", "tool": "noop"}))
            .await;
        stack.api.wait_finished(&stack.key, id, WITHIN).await;
    }
    proxy.restore();
    let mut seen: Vec<Value> = Vec::new();
    submit_and_see(&stack.api, &stack.key, &lines, &mut seen, 1).await;
    assert_every_event_once(&stack.env, &seen).await;
    wait_to_hear(&notes, "resuming after event").await;
    let _ = tail.kill();
    let _ = tail.wait();
    stack.finish().await;
}

/// Drops the connections through `proxy` and refuses new ones for a moment.
async fn cut_briefly(proxy: &Proxy) {
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();
}

/// Waits until a line of `notes` says `words`.
async fn wait_to_hear(notes: &mpsc::Receiver<String>, words: &str) {
    let mut said: Vec<String> = Vec::new();
    wait_until(WITHIN, &format!("the tail says {words:?}"), || {
        said.extend(notes.try_iter());
        let heard = said.iter().any(|line| line.contains(words));
        async move { heard }
    })
    .await;
}

/// The lines a child prints, as they come.
fn follow(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_queues_and_workers_are_operated_from_the_command_line() {
    let stack = Stack::start("executor,schedule").await;
    let operator = stack.env.create_operator_key("ops");
    let created = run(
        &mut stack.cli(),
        &[
            "schedules",
            "create",
            "--name",
            "every-second",
            "--cron",
            "* * * * * *",
            "executor.run",
            "--tool",
            "noop",
            "--json",
        ],
    )
    .ok()
    .json_lines()
    .remove(0);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created["target"],
        json!({"kind": "executor.run", "tool": "noop"})
    );
    let listed = run(&mut stack.cli(), &["schedules", "list"]).ok().stdout;
    assert!(
        listed.contains("every-second")
            && listed.contains("* * * * * * (UTC)")
            && listed.contains("active"),
        "{listed}"
    );
    wait_until(WITHIN, "the schedule fired", || async {
        run(&mut stack.cli(), &["schedules", "show", &id, "--json"])
            .ok()
            .json_lines()[0]["last_firings"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    })
    .await;
    assert!(
        run(&mut stack.cli(), &["schedules", "pause", &id])
            .ok()
            .stdout
            .contains("paused")
    );
    let ran = run(
        &mut stack.cli(),
        &[
            "schedules",
            "create",
            "--name",
            "every-second",
            "--at",
            "1h",
            "agent.prioritise",
        ],
    )
    .failed_with(4);
    assert!(ran.stderr.contains("409 name_taken"), "{}", ran.stderr);
    run(&mut stack.cli(), &["schedules", "delete", &id]).ok();
    run(&mut stack.cli(), &["schedules", "show", &id]).failed_with(4);

    let queues = run(
        &mut stack.cli_as(&operator),
        &["queues", "pause", "executor"],
    )
    .ok()
    .stdout;
    assert!(queues.contains("queue executor is paused"), "{queues}");
    let table = run(&mut stack.cli(), &["queues"]).ok().stdout;
    let executor = table
        .lines()
        .find(|line| line.starts_with("executor"))
        .unwrap();
    assert!(executor.contains("paused"), "{table}");
    run(
        &mut stack.cli_as(&operator),
        &["queues", "resume", "executor"],
    )
    .ok();
    let workers = run(&mut stack.cli_as(&operator), &["workers", "--json"])
        .ok()
        .json_lines();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["leader"], true);
    let snapshot = run(&mut stack.cli_as(&operator), &["top", "--once"])
        .ok()
        .stdout;
    assert!(
        snapshot.contains("QUEUE") && snapshot.contains("WORKER") && snapshot.contains("leader"),
        "{snapshot}"
    );
    let tenant_view = run(&mut stack.cli(), &["top", "--once"]).ok().stdout;
    assert!(
        tenant_view.contains("workers: listed for operator keys"),
        "{tenant_view}"
    );
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connectors_are_tested_one_by_one_and_all_at_once() {
    let fleet = ConnectorFleet::start(&[], &[]).await;
    fleet.fake.add_github_pat("ghp_good");
    let good = fleet
        .connect_token(json!({"provider": "github", "name": "good", "token": "ghp_good"}))
        .await;
    fleet
        .connect_token(json!({"provider": "github", "name": "revoked", "token": "ghp_revoked"}))
        .await;
    let config = config_dir();
    let cli = || taskfleet(&fleet.api.base, Some(&fleet.key), &config);

    let listed = run(&mut cli(), &["connectors", "list"]).ok().stdout;
    assert!(
        listed.contains("good") && listed.contains("revoked") && listed.contains("github"),
        "{listed}"
    );
    let ran = run(
        &mut cli(),
        &["connectors", "test", good["id"].as_str().unwrap()],
    )
    .ok();
    assert!(ran.stdout.starts_with("✓ github good: "), "{}", ran.stdout);

    let ran = run(&mut cli(), &["connectors", "test-all"]).failed_with(1);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("✓ github good: ")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("✗ github revoked: ")),
        "{lines:?}"
    );
    assert_eq!(lines.last(), Some(&"1 passed, 1 failed"));
    let events: Vec<String> = run(&mut cli(), &["connectors", "test-all", "--json"])
        .json_lines()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        events.iter().filter(|e| *e == "connecting").count(),
        2,
        "{events:?}"
    );
    assert_eq!(events.last().map(String::as_str), Some("done"));
    let _ = fs::remove_dir_all(&config);
    fleet.env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_streams_the_agents_reply_and_tasks_show_the_focus_lists() {
    let mut env = TestEnv::new().await;
    let fake = FakeProviders::start().await;
    let vars = fake.env_with_llm(LLM_MODEL);
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let api = env.start_api(&pairs).await;
    env.start_worker_env(&["--queues", "agent,embed"], &pairs);
    let key = env.create_key("acme");
    let config = config_dir();
    let cli = || taskfleet(&api.base, Some(&key), &config);

    // One message, then a prompt fed two lines: the conversation carries on.
    let ran = run(
        &mut cli(),
        &["chat", "add a task to renew the TLS certificate"],
    )
    .ok();
    assert!(
        ran.stdout
            .contains("Added \"Renew the TLS certificate\" to your tasks."),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("(used add_task)"), "{}", ran.stdout);
    assert!(
        !ran.stdout.contains("missed on the way"),
        "streamed whole: {}",
        ran.stdout
    );
    let ran = run_with_input(
        &mut cli(),
        &["chat"],
        "add a task to water the plants\nlist my tasks\n",
    )
    .ok();
    assert!(
        ran.stdout.contains("Water the plants") && ran.stdout.contains("Renew the TLS certificate"),
        "{}",
        ran.stdout
    );
    let reply = run(&mut cli(), &["chat", "hello", "--json"])
        .ok()
        .json_lines()
        .remove(0);
    assert_eq!(reply["provider"], "fleet");

    // The tasks the agent added are on the focus lists (ranked when added).
    wait_until(WITHIN, "the new tasks are ranked", || async {
        let shown = run(&mut cli(), &["tasks", "--json"]).ok().json_lines();
        shown.len() >= 2
    })
    .await;
    let shown = run(&mut cli(), &["tasks"]).ok().stdout;
    for part in [
        "Today",
        "This week",
        "This month",
        "Renew the TLS certificate",
    ] {
        assert!(shown.contains(part), "{shown}");
    }
    // --limit is per horizon: one task from each horizon that has any.
    let ranked = run(&mut cli(), &["tasks", "--json"]).ok().json_lines();
    let mut horizons: Vec<&str> = ranked
        .iter()
        .map(|t| t["horizon"].as_str().unwrap())
        .collect();
    horizons.dedup();
    let first_each = run(&mut cli(), &["tasks", "--limit", "1", "--json"])
        .ok()
        .json_lines();
    assert_eq!(first_each.len(), horizons.len(), "{ranked:?}");
    let _ = fs::remove_dir_all(&config);
    env.finish().await;
}

#[tokio::test]
async fn completions_load_in_the_shell_and_every_command_has_examples() {
    let config = config_dir();
    let cli = || taskfleet("http://127.0.0.1:1", None, &config);
    let bash = run(&mut cli(), &["completions", "bash"]).ok().stdout;
    let script = config.join("taskfleet.bash");
    fs::write(&script, bash).unwrap();
    let loaded = Command::new("bash")
        .args([
            "-c",
            &format!("source {} && complete -p taskfleet", script.display()),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("-F _taskfleet taskfleet"),
        "{loaded:?}"
    );
    assert!(
        run(&mut cli(), &["completions", "zsh"])
            .ok()
            .stdout
            .starts_with("#compdef taskfleet")
    );
    assert!(
        run(&mut cli(), &["completions", "fish"])
            .ok()
            .stdout
            .contains("complete -c taskfleet")
    );
    for command in [
        &["submit"][..],
        &["tail"],
        &["top"],
        &["schedules", "create"],
        &["connectors", "test-all"],
        &["chat"],
        &["login"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = run(&mut cli(), &args).ok().stdout;
        assert!(help.contains("Examples:\n  taskfleet "), "{args:?}: {help}");
    }
    let _ = fs::remove_dir_all(&config);
}

#[tokio::test(flavor = "multi_thread")]
async fn top_and_a_waited_submit_draw_on_a_terminal() {
    let stack = Stack::start("executor").await;
    let operator = stack.env.create_operator_key("ops");
    let taskfleet = binary("taskfleet");
    let on_terminal = |command: &str, key: &str, cols: u16, rows: u16| {
        let env = [
            ("TASKFLEET_URL", stack.api.base.as_str()),
            ("TASKFLEET_KEY", key),
            ("XDG_CONFIG_HOME", stack.config.to_str().unwrap()),
        ];
        Terminal::start(
            &format!("{} {command}", taskfleet.display()),
            &env,
            cols,
            rows,
        )
        .expect("tmux runs (`make test` installs it)")
    };
    let top = on_terminal("top --interval 0.3", &operator, 140, 30);
    let screen = top
        .wait_for(
            &["taskfleet top", "QUEUE", "executor", "WORKER", "leader"],
            WITHIN,
        )
        .await;
    assert!(top.on_alternate_screen());
    assert!(
        screen.lines().all(|line| line.chars().count() <= 140),
        "{screen}"
    );
    // Redrawn in place: a running job shows in the executor's row, with no scrolling.
    let id = stack
        .api
        .submit(
            &stack.key,
            json!({"kind": "executor.run", "tool": "sleep", "args": {"ms": 3000}}),
        )
        .await;
    let running = |screen: &str| {
        screen.lines().any(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            cells.first() == Some(&"executor") && cells.get(3) == Some(&"1")
        })
    };
    let screen = top
        .wait_for_screen("the executor running one job", WITHIN, running)
        .await;
    assert!(
        screen.starts_with("taskfleet top"),
        "drawn from the top: {screen}"
    );
    assert_eq!(screen.matches("taskfleet top").count(), 1, "{screen}");
    stack.api.wait_finished(&stack.key, id, WITHIN).await;
    // Ctrl-Z gives the shell its screen and line editing back while top is stopped; once
    // continued, top takes the terminal again and redraws.
    top.press(&["C-z"]);
    wait_until(WITHIN, "the terminal is put back for the stop", || {
        let back = !top.on_alternate_screen() && top.line_settings().contains(" icanon");
        async move { back }
    })
    .await;
    top.continue_stopped();
    wait_until(WITHIN, "top takes the terminal again", || {
        let taken = top.on_alternate_screen() && top.line_settings().contains(" -icanon");
        async move { taken }
    })
    .await;
    top.wait_for(&["taskfleet top", "QUEUE", "executor"], WITHIN)
        .await;
    top.press(&["q"]);
    assert_eq!(top.exit_status(WITHIN).await, 0, "q quits top");
    // The terminal is as it was: the normal screen, echo and line editing on.
    assert!(!top.on_alternate_screen());
    let settings = top.line_settings();
    assert!(
        settings.contains(" icanon") && settings.contains(" echo "),
        "{settings}"
    );
    drop(top);

    // A key revoked under a running top ends it with the API's words, the terminal restored.
    let doomed = stack.env.create_operator_key("ops");
    let top = on_terminal("top --interval 0.3", &doomed, 140, 30);
    top.wait_for(&["WORKER"], WITHIN).await;
    assert!(
        stack
            .env
            .api_command(&["keys", "revoke", &doomed])
            .status
            .success()
    );
    assert_eq!(top.exit_status(WITHIN).await, 4);
    let screen = top.screen();
    assert!(
        screen.contains("unknown, revoked or expired API key"),
        "{screen}"
    );
    assert!(!top.on_alternate_screen());
    assert!(top.line_settings().contains(" icanon"));
    drop(top);

    // A waited job on a paused queue says so, then shows its progress live, then its end.
    run(
        &mut stack.cli_as(&operator),
        &["queues", "pause", "executor"],
    )
    .ok();
    let submit = on_terminal(
        "submit executor.run --tool sleep --arg ms=4000 --wait",
        &stack.key,
        120,
        20,
    );
    submit.wait_for(&["queue executor is paused"], WITHIN).await;
    run(
        &mut stack.cli_as(&operator),
        &["queues", "resume", "executor"],
    )
    .ok();
    let screen = submit
        .wait_for(&["50%", "slept 2000 of 4000 ms"], WITHIN)
        .await;
    assert!(!screen.contains("succeeded"), "{screen}");
    let screen = submit
        .wait_for(&["100%", "succeeded in", "\"slept_ms\": 4000"], WITHIN)
        .await;
    assert_eq!(submit.exit_status(WITHIN).await, 0, "{screen}");
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allow_listed_command_gets_its_words_and_files() {
    let dir = config_dir();
    let list = dir.join("executor-tools.toml");
    fs::write(
        &list,
        r#"
[tools."show.args"]
program = "/bin/sh"
args = ["-c", "echo \"args: $*\"; cat app.py", "show.args"]
allowed_args = ['--select=[A-Z,]+', 'check']
"#,
    )
    .unwrap();
    let list = list.to_str().unwrap();
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[("TASKFLEET_EXECUTOR_TOOLS", list)]).await;
    env.start_worker_env(
        &["--queues", "executor"],
        &[("TASKFLEET_EXECUTOR_TOOLS", list)],
    );
    let key = env.create_key("acme");
    let file = dir.join("app.py");
    fs::write(&file, "import os\n").unwrap();

    // The API's list says show.args is a command: each --arg is a word, dashes and all.
    let args = ["submit", "executor.run", "--tool", "show.args", "--wait"];
    let words = [
        "--file",
        file.to_str().unwrap(),
        "--arg",
        "--select=E,F",
        "--arg",
        "check",
    ];
    let ran = run(
        &mut taskfleet(&api.base, Some(&key), &dir),
        &[&args[..], &words].concat(),
    )
    .ok();
    assert!(
        ran.stdout.contains("args: --select=E,F check\nimport os\n"),
        "{}",
        ran.stdout
    );
    let _ = fs::remove_dir_all(&dir);
    env.finish().await;
}
