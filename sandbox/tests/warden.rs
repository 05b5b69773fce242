//! The warden on its own, in what the end-to-end tests (tests/tests/executor_commands.rs) do
//! not reach: a worker that is not root, and a program that does not start.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use taskfleet_sandbox::{End, Limits, Report, Request, running_as_root};

fn request(program: &str, args: &[&str], dir: &std::path::Path) -> Request {
    Request {
        program: program.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![],
        dir: dir.to_path_buf(),
        limits: Limits {
            timeout_ms: 10_000,
            cpu_secs: 5,
            memory_bytes: 512 << 20,
            file_size_bytes: 1 << 20,
            open_files: 64,
            processes: 256,
            max_output_bytes: 4096,
        },
        network: false,
        run_as: None,
    }
}

/// Runs the warden through `wrapper` (e.g. `setpriv` to another user), as the worker does.
fn warden(wrapper: &[&str], request: &Request) -> Report {
    let binary = env!("CARGO_BIN_EXE_taskfleet-sandbox");
    let mut argv: Vec<&str> = wrapper.to_vec();
    argv.push(binary);
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", serde_json::to_string(request).unwrap()).unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    drop(stdin);
    child.wait().unwrap();
    serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line}"))
}

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("taskfleet-warden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The unprivileged run below must be able to enter it.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    dir
}

#[test]
fn a_warden_that_is_not_root_still_isolates_the_network_in_a_user_namespace() {
    let dir = scratch();
    // As root, be another user first, as a worker that is not root would be.
    let wrapper: &[&str] = match running_as_root() {
        true => &[
            "/usr/bin/setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        false => &["/usr/bin/env"],
    };
    let report = warden(
        wrapper,
        &request(
            "/bin/sh",
            &[
                "-c",
                "id -u; tr -d ' ' </proc/net/dev | cut -d: -f1 | tail -n +3",
            ],
            &dir,
        ),
    );
    assert_eq!(report.end, End::Exited { code: 0 }, "{report:?}");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let expected_uid = if running_as_root() { 65534 } else { uid };
    let mut lines = report.stdout.text.lines();
    assert_eq!(
        lines.next(),
        Some(expected_uid.to_string().as_str()),
        "{report:?}"
    );
    if report.network == "isolated" {
        // A namespace of its own holds only its loopback device.
        assert_eq!(lines.collect::<Vec<_>>(), ["lo"], "{report:?}");
    } else {
        // Some kernels forbid user namespaces to unprivileged users; then it says why.
        assert!(report.network.starts_with("shared: "), "{report:?}");
    }
}

#[test]
fn a_program_that_does_not_start_is_reported_as_such() {
    let dir = scratch();
    let report = warden(&["/usr/bin/env"], &request("/no/such/program", &[], &dir));
    match report.end {
        End::NotStarted { message, retryable } => {
            assert!(
                message.contains("could not start /no/such/program"),
                "{message}"
            );
            assert!(!retryable, "a missing program stays missing");
        }
        other => panic!("{other:?}"),
    }
}
