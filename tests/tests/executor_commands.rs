//! Allow-listed executor commands, submitted through the API and run by a real worker in the
//! sandbox: real linters and formatters (ruff, flake8, prettier from `make test`'s set-up), the
//! refusals at submission, and every escape a command might try.

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use taskfleet_tests::{Api, TestEnv, browser::Browser, json, repository, wait_until};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(20);

/// The allow list `deploy/local/tools.sh` made (the example, pointed at var/tools), plus tools
/// that try to get out. `marker` makes the processes of this run findable: `sleep <marker>`.
fn allow_list(marker: &str) -> String {
    let example = std::fs::read_to_string(repository("var/executor-tools.toml"))
        .expect("var/executor-tools.toml is missing: `make test` makes it (deploy/local/tools.sh)");
    let escapes = format!(
        r#"
[tools."escape.fork"]
program = "/bin/sh"
args = ["-c", "(setsid sleep {marker} &) ; (sleep {marker} &) ; sleep {marker} & echo forked"]

[tools."escape.timeout"]
program = "/bin/sh"
args = ["-c", "echo waiting; sleep {marker}"]
limits = {{ timeout_secs = 1 }}

[tools."escape.hang"]
program = "/bin/sh"
args = ["-c", "sleep {marker}"]
limits = {{ timeout_secs = 600 }}

[tools."escape.kill_all"]
program = "/bin/sh"
args = ["-c", "kill -9 -1; echo tried"]

[tools."escape.memory"]
program = "/usr/bin/python3"
args = ["-c", "x = bytearray(2 * 1024 ** 3); print('allocated')"]
result_exit_codes = [0]
limits = {{ memory_mib = 256 }}

[tools."escape.output"]
program = "/bin/sh"
args = ["-c", "yes | head -c 2000000000; echo done >&2"]
limits = {{ max_output_bytes = 1000 }}

[tools."escape.environ"]
program = "/bin/sh"
args = ["-c", "tr '\\0' '\\n' </proc/self/environ; grep -l -a -s DATABASE_URL /proc/[0-9]*/environ | wc -l"]
env = {{ ALLOWED = "yes" }}

[tools."escape.network"]
program = "/usr/bin/python3"
args = ["-c", "import socket; socket.create_connection(('127.0.0.1', 6379), timeout=2); print('connected')"]
result_exit_codes = [0]

[tools."escape.cpu"]
program = "/bin/sh"
args = ["-c", "while :; do :; done"]
limits = {{ cpu_secs = 1, timeout_secs = 30 }}

[tools."escape.file_size"]
program = "/bin/sh"
args = ["-c", "exec head -c 10000000 /dev/zero > big"]
limits = {{ file_size_mib = 1 }}

[tools."escape.links"]
program = "/bin/sh"
args = ["-c", "ln -s /etc/shadow leak; ln -s / root; echo changed > a.txt"]
writes_files = true
"#
    );
    format!("{example}\n{escapes}")
}

struct Fleet {
    env: TestEnv,
    api: Api,
    key: String,
    worker: usize,
    marker: String,
    /// The worker's TMPDIR, where it makes the jobs' directories.
    tmp: PathBuf,
}

/// A worker whose commands run four at a time, whatever the machine's cores: some tests hold
/// one command while another runs.
async fn fleet() -> Fleet {
    fleet_with_slots("4").await
}

/// A worker with `slots` command slots (`TASKFLEET_COMMAND_SLOTS`).
async fn fleet_with_slots(slots: &str) -> Fleet {
    let mut env = TestEnv::new().await;
    // A fractional sleep nobody else runs: its processes are this test's.
    let marker = format!("300.{}", Uuid::new_v4().as_u128() % 1_000_000_000);
    let tmp = std::env::temp_dir().join(format!("taskfleet-test-{}", Uuid::new_v4()));
    std::fs::create_dir(&tmp).unwrap();
    let list = tmp.join("executor-tools.toml");
    std::fs::write(&list, allow_list(&marker)).unwrap();
    let list = list.to_str().unwrap().to_owned();
    let api = env
        .start_api(&[("TASKFLEET_EXECUTOR_TOOLS", list.as_str())])
        .await;
    let worker = env.start_worker_env(
        &[],
        &[
            ("TASKFLEET_EXECUTOR_TOOLS", list.as_str()),
            ("TMPDIR", tmp.to_str().unwrap()),
            ("TASKFLEET_COMMAND_SLOTS", slots),
        ],
    );
    let key = env.create_key("acme");
    Fleet {
        env,
        api,
        key,
        worker,
        marker,
        tmp,
    }
}

impl Fleet {
    async fn run(&self, tool: &str, files: Value, args: Value) -> Value {
        let id = self.submit(tool, files, args).await;
        self.api.wait_finished(&self.key, id, WITHIN).await
    }

    async fn submit(&self, tool: &str, files: Value, args: Value) -> Uuid {
        self.api
            .submit(
                &self.key,
                json!({"kind": "executor.run", "tool": tool, "files": files, "args": args,
                       "max_attempts": 1}),
            )
            .await
    }

    /// Processes of this test's tools still alive.
    fn survivors(&self) -> usize {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("sleep {}", self.marker)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    async fn no_survivors(&self) {
        wait_until(
            Duration::from_secs(10),
            "the tool's processes are gone",
            || async { self.survivors() == 0 },
        )
        .await;
    }

    fn job_dirs(&self) -> usize {
        std::fs::read_dir(&self.tmp)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("taskfleet-job-")
            })
            .count()
    }
}

/// Submits a job the API must refuse with 422; returns its message.
async fn refuse(fleet: &Fleet, job: Value) -> String {
    let (status, body) = fleet.api.post(&fleet.key, "/v1/jobs", &job).await;
    assert_eq!(status, 422, "{job}: {body}");
    assert_eq!(body["error"], "invalid_payload", "{body}");
    body["message"].as_str().unwrap().to_owned()
}

fn error_of(job: &Value) -> String {
    assert_eq!(job["state"], "dead", "{job}");
    job["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn real_linters_and_formatters_run_through_the_queue() {
    let fleet = fleet().await;
    let python = json!({"app/main.py": "import os\nx=1\n", "README.md": "# hi\n"});

    let ruff = fleet
        .submit("ruff.check", python.clone(), json!(["--select=E,F"]))
        .await;
    let job = fleet.api.wait_finished(&fleet.key, ruff, WITHIN).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let result = &job["result"];
    // Findings are the check's verdict, not a failure.
    assert_eq!(result["exit_code"], 1, "{result}");
    assert!(
        result["stdout"]
            .as_str()
            .unwrap()
            .contains("app/main.py:1:8: F401"),
        "{result}"
    );
    assert_eq!(result["network"], "isolated");
    assert!(result["peak_memory_bytes"].as_u64().unwrap() > 0);
    let summary = result["summary"].as_str().unwrap().to_owned();
    assert!(summary.starts_with("ruff.check exited 1 in "), "{result}");
    // Progress said when it started and how it ended.
    let progress = fleet.env.progress_messages(ruff).await;
    assert_eq!(
        progress.first().map(String::as_str),
        Some("running ruff.check on 2 files")
    );
    assert!(
        progress.last().unwrap().starts_with("ruff.check exited 1"),
        "{progress:?}"
    );

    let clean = fleet
        .run("ruff.check", json!({"ok.py": "x = 1\n"}), json!([]))
        .await;
    assert_eq!(clean["result"]["exit_code"], 0, "{clean}");

    let format = fleet.run("ruff.format", python.clone(), json!([])).await;
    assert_eq!(format["state"], "succeeded", "{format}");
    assert_eq!(
        format["result"]["files_changed"],
        json!({"app/main.py": "import os\n\nx = 1\n"}),
        "{format}"
    );
    assert_eq!(format["result"]["files_deleted"], json!([]));

    let flake8 = fleet
        .run("flake8", python.clone(), json!(["--max-line-length=100"]))
        .await;
    assert_eq!(flake8["result"]["exit_code"], 1, "{flake8}");
    assert!(
        flake8["result"]["stdout"]
            .as_str()
            .unwrap()
            .contains("./app/main.py:2:2: E225"),
        "{flake8}"
    );

    if repository("var/tools/prettier/node_modules/prettier").exists() {
        let js = json!({"web/app.js": "const a = {b:1}\n"});
        let check = fleet.run("prettier.check", js.clone(), json!([])).await;
        assert_eq!(check["result"]["exit_code"], 1, "{check}");
        assert!(
            check["result"]["stderr"]
                .as_str()
                .unwrap()
                .contains("web/app.js"),
            "{check}"
        );
        let write = fleet
            .run("prettier.write", js, json!(["--single-quote"]))
            .await;
        assert_eq!(
            write["result"]["files_changed"],
            json!({"web/app.js": "const a = { b: 1 };\n"}),
            "{write}"
        );
    }
    assert_eq!(fleet.job_dirs(), 0, "every job's directory is removed");

    // The dashboard shows what the command printed, as it printed it.
    let browser = Browser::start().await;
    browser.sign_in(&fleet.api.base, &fleet.key).await;
    let row = format!("#jobs-table tr[data-job-id=\"{ruff}\"]");
    browser.wait_for(&row, WAIT).await;
    browser.click(&row).await;
    browser
        .wait_text("#job-command-summary", &summary, WAIT)
        .await;
    let stdout = browser
        .eval("return document.querySelector('#job-command-stdout').textContent")
        .await;
    assert!(
        stdout.as_str().unwrap().contains("app/main.py:1:8: F401"),
        "{stdout}"
    );
    fleet.env.finish().await;
}

#[tokio::test]
async fn jobs_the_allow_list_does_not_allow_are_refused_at_submission() {
    let fleet = fleet().await;
    let message = refuse(
        &fleet,
        json!({"kind": "executor.run", "tool": "rm", "files": {}}),
    )
    .await;
    assert!(
        message.contains("unknown tool `rm`") && message.contains("ruff.check"),
        "{message}"
    );
    let message = refuse(
        &fleet,
        json!({"kind": "executor.run", "tool": "ruff.check",
                                "files": {"a.py": ""}, "args": ["--config=/etc/passwd"]}),
    )
    .await;
    assert!(
        message.contains("`--config=/etc/passwd` is not allowed"),
        "{message}"
    );
    assert!(message.contains("--select=[A-Z0-9,]+"), "{message}");
    for path in ["../escape.py", "/etc/cron.d/x", "a/../../b.py", "./a.py"] {
        let message = refuse(
            &fleet,
            json!({"kind": "executor.run", "tool": "ruff.check",
                                    "files": {path: "x = 1\n"}}),
        )
        .await;
        assert!(message.contains(&format!("file `{path}`")), "{message}");
    }
    let message = refuse(
        &fleet,
        json!({"kind": "executor.run", "tool": "ruff.check",
                                "files": {"a.py": ""}, "args": {"select": "E"}}),
    )
    .await;
    assert!(message.contains("array of strings"), "{message}");

    // The list, with limits, for a client to pick from; programs and env values stay private.
    let (status, listing) = fleet.api.get(&fleet.key, "/v1/executor/tools").await;
    assert_eq!(status, 200, "{listing}");
    let tools = listing["tools"].as_array().unwrap();
    assert_eq!(tools[0]["name"], "noop");
    let ruff = tools.iter().find(|t| t["name"] == "ruff.check").unwrap();
    assert_eq!(ruff["kind"], "command");
    assert_eq!(ruff["limits"]["timeout_secs"], 30);
    assert_eq!(ruff["result_exit_codes"], json!([0, 1]));
    assert!(ruff.get("program").is_none(), "{ruff}");
    let (status, _) = fleet.api.get("not-a-key", "/v1/executor/tools").await;
    assert_eq!(status, 401);
    assert_eq!(
        fleet.env.count_state("queued").await,
        0,
        "nothing refused was accepted"
    );
    fleet.env.finish().await;
}

#[tokio::test]
async fn nothing_a_command_starts_outlives_it() {
    let fleet = fleet().await;
    let job = fleet.run("escape.fork", json!({}), json!([])).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["stdout"], "forked\n");
    // A child in a session of its own, an orphan, and one still in the group: all killed.
    assert_eq!(job["result"]["orphans_killed"], 3, "{job}");
    assert_eq!(fleet.survivors(), 0);

    let started = std::time::Instant::now();
    let job = fleet.run("escape.timeout", json!({}), json!([])).await;
    assert!(
        error_of(&job).contains("escape.timeout ran past its timeout of 1 s and was killed"),
        "{job}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    fleet.no_survivors().await;
    fleet.env.finish().await;
}

#[tokio::test]
async fn a_cancelled_job_or_a_dead_worker_takes_its_command_with_it() {
    let mut fleet = fleet().await;
    let id = fleet.submit("escape.hang", json!({}), json!([])).await;
    wait_until(Duration::from_secs(10), "the command runs", || async {
        fleet.survivors() > 0
    })
    .await;
    let (status, body) = fleet
        .api
        .post(&fleet.key, &format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert!(status == 200 || status == 202, "{body}");
    fleet.no_survivors().await;
    let job = fleet.api.wait_finished(&fleet.key, id, WITHIN).await;
    assert_eq!(job["state"], "cancelled", "{job}");

    // A worker killed outright closes its end of the warden's stdin; the warden kills the
    // command before the job is reclaimed anywhere.
    fleet.submit("escape.hang", json!({}), json!([])).await;
    wait_until(Duration::from_secs(10), "the command runs", || async {
        fleet.survivors() > 0
    })
    .await;
    fleet.env.signal(fleet.worker, "KILL");
    fleet.no_survivors().await;
    fleet.env.finish().await;
}

#[tokio::test]
async fn runs_cannot_signal_each_other() {
    let fleet = fleet().await;
    let hang = fleet.submit("escape.hang", json!({}), json!([])).await;
    wait_until(Duration::from_secs(10), "the command runs", || async {
        fleet.survivors() > 0
    })
    .await;
    // `kill -9 -1` signals every process its user may: each run has a user of its own.
    let kill = fleet.run("escape.kill_all", json!({}), json!([])).await;
    assert_eq!(kill["result"]["stdout"], "tried\n", "{kill}");
    assert!(fleet.survivors() > 0, "the other run's command is alive");
    let (status, job) = fleet.api.get(&fleet.key, &format!("/v1/jobs/{hang}")).await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("running")),
        "{job}"
    );
    fleet
        .api
        .post(&fleet.key, &format!("/v1/jobs/{hang}/cancel"), &json!({}))
        .await;
    fleet.no_survivors().await;
    fleet.env.finish().await;
}

/// The executor queue runs many jobs at once, but only as many commands as the worker has
/// slots: a command waits for one, its job `running` meanwhile, and its built-in neighbours
/// run on.
#[tokio::test]
async fn commands_wait_for_a_slot_while_built_in_tools_run_on() {
    let fleet = fleet_with_slots("1").await;
    let hang = fleet.submit("escape.hang", json!({}), json!([])).await;
    wait_until(Duration::from_secs(10), "the command runs", || async {
        fleet.survivors() > 0
    })
    .await;
    let waiting = fleet
        .submit("ruff.check", json!({"main.py": "x = 1\n"}), json!([]))
        .await;
    let noop = fleet
        .api
        .submit(&fleet.key, json!({"kind": "executor.run", "tool": "noop"}))
        .await;
    let done = fleet.api.wait_finished(&fleet.key, noop, WITHIN).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, job) = fleet
        .api
        .get(&fleet.key, &format!("/v1/jobs/{waiting}"))
        .await;
    assert_eq!(
        job["state"], "running",
        "the second command waits for the slot: {job}"
    );

    fleet
        .api
        .post(&fleet.key, &format!("/v1/jobs/{hang}/cancel"), &json!({}))
        .await;
    let job = fleet.api.wait_finished(&fleet.key, waiting, WITHIN).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["exit_code"], 0, "{job}");
    fleet.no_survivors().await;
    fleet.env.finish().await;
}

#[tokio::test]
async fn limits_stop_what_would_exhaust_the_worker() {
    let fleet = fleet().await;
    let memory = fleet.run("escape.memory", json!({}), json!([])).await;
    let error = error_of(&memory);
    assert!(
        error.contains("escape.memory failed with exit code 1: MemoryError"),
        "{error}"
    );

    let output = fleet.run("escape.output", json!({}), json!([])).await;
    let result = &output["result"];
    assert_eq!(output["state"], "succeeded", "{output}");
    assert_eq!(result["stdout_bytes"], 2_000_000_000u64, "{result}");
    assert_eq!(result["stdout_truncated"], true);
    assert_eq!(result["stdout"].as_str().unwrap().len(), 1000);
    assert_eq!(result["stderr"], "done\n");
    assert!(
        result["summary"]
            .as_str()
            .unwrap()
            .contains("stdout cut at 1000 of 2000000000 bytes")
    );

    let cpu = fleet.run("escape.cpu", json!({}), json!([])).await;
    assert!(error_of(&cpu).contains("used its 1 s of CPU time"), "{cpu}");

    let file = fleet.run("escape.file_size", json!({}), json!([])).await;
    assert!(
        error_of(&file).contains("wrote a file past its limit of 1 MiB"),
        "{file}"
    );
    fleet.env.finish().await;
}

#[tokio::test]
async fn a_command_sees_no_secrets_no_network_and_no_way_out_of_its_directory() {
    let fleet = fleet().await;
    let environ = fleet.run("escape.environ", json!({}), json!([])).await;
    // Its environment is what the operator allowed, nothing of the worker's, and the
    // worker's own environment (DATABASE_URL, keys) is not readable to it.
    assert_eq!(environ["result"]["stdout"], "ALLOWED=yes\n0\n", "{environ}");

    let network = fleet.run("escape.network", json!({}), json!([])).await;
    let error = error_of(&network);
    assert!(
        error.contains("escape.network failed with exit code 1"),
        "{error}"
    );
    assert!(error.contains("unreachable"), "{error}");

    let links = fleet
        .run("escape.links", json!({"a.txt": "before\n"}), json!([]))
        .await;
    let result = &links["result"];
    assert_eq!(
        result["files_changed"],
        json!({"a.txt": "changed\n"}),
        "{result}"
    );
    assert_eq!(
        result["files_skipped"]["leak"], "not a regular file",
        "{result}"
    );
    assert_eq!(
        result["files_skipped"]["root"], "not a regular file",
        "{result}"
    );
    assert_eq!(fleet.job_dirs(), 0);
    fleet.env.finish().await;
}
