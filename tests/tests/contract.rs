//! The API keeps the contract its OpenAPI document states. schemathesis fuzzes every operation
//! of `/openapi.json` against a live API and worker and checks each answer against the
//! document; a client generated from the document by openapi-python-client runs the README's
//! flow. Both tools come pinned from PyPI into `var/contract` (`deploy/local/contract-tools.sh`,
//! run by `make test`).

use std::{path::PathBuf, process::Command};

use taskfleet_tests::{TestEnv, repository};
use uuid::Uuid;

/// The checks `make test` holds the API to.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,use_after_free";

/// How long schemathesis fuzzes (its fuzzing and stateful phases repeat until it is spent).
const FUZZ_SECS: &str = "120";

fn contract_tool(name: &str) -> PathBuf {
    let path = repository(&format!("var/contract/bin/{name}"));
    assert!(
        path.exists(),
        "{} is missing: `make test` installs it (deploy/local/contract-tools.sh)",
        path.display()
    );
    path
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tf-{what}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

#[tokio::test]
async fn schemathesis_finds_every_answer_true_to_the_document() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    env.start_worker(&["--queues", "executor,schedule"]);
    // An operator key reaches every operation, the operator-only ones included.
    let key = env.create_operator_key("acme");
    let reports = scratch_dir("schemathesis");

    let run = Command::new(contract_tool("schemathesis"))
        .arg("run")
        .arg(api.url("/openapi.json"))
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-time", FUZZ_SECS])
        .args(["--request-timeout", "30"])
        .args(["--seed", "25"])
        .args(["--workers", "2"])
        // The fleet-wide stream never ends by design; its events are checked against the
        // document by the generated client's test below.
        .args(["--exclude-operation-id", "streamEvents"])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args(["--report", "junit", "--report-dir"])
        .arg(&reports)
        // Where it keeps its cache, too.
        .current_dir(&reports)
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(
        run.status.success(),
        "schemathesis found answers the document does not allow (above)"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_client_generated_from_the_document_runs_the_readme_flow() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    // Executor jobs run; jobs of the other kinds stay queued, which is all the flow reads.
    env.start_worker(&["--queues", "executor,schedule"]);
    let key = env.create_key("acme");
    let dir = scratch_dir("client");
    let spec = api
        .http
        .get(api.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    std::fs::write(dir.join("openapi.json"), spec).unwrap();
    // No formatting of the generated code afterwards (it would want ruff on the PATH).
    std::fs::write(dir.join("generator.yaml"), "post_hooks: []\n").unwrap();

    let generated = Command::new(contract_tool("openapi-python-client"))
        .args(["generate", "--meta", "none", "--config"])
        .arg(dir.join("generator.yaml"))
        .arg("--path")
        .arg(dir.join("openapi.json"))
        .arg("--output-path")
        .arg(dir.join("taskfleet_client"))
        .output()
        .expect("openapi-python-client runs");
    let out = format!(
        "{}\n{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    println!("{out}");
    assert!(generated.status.success(), "the client generator failed");
    assert!(
        !out.to_lowercase().contains("warning"),
        "the generator skipped parts of the document it could not read (above)"
    );

    let flow = Command::new(contract_tool("python"))
        .arg(repository("tests/contract/readme_flow.py"))
        .env("PYTHONPATH", &dir)
        .env("TASKFLEET_URL", &api.base)
        .env("TASKFLEET_KEY", &key)
        .output()
        .expect("python runs");
    println!(
        "{}\n{}",
        String::from_utf8_lossy(&flow.stdout),
        String::from_utf8_lossy(&flow.stderr)
    );
    assert!(
        flow.status.success(),
        "the generated client's flow failed (above)"
    );
    env.finish().await;
}
