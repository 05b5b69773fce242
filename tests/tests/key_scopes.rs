//! API key scopes and lifetimes: a read key reads its tenant's and changes nothing, a key
//! with an expiry stops working at it, and `keys list` shows every key but never a key.

use std::time::Duration;

use taskfleet_tests::{TestEnv, json};

#[tokio::test]
async fn a_read_key_reads_its_tenants_jobs_and_changes_nothing() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_API_KEY_CACHE_SECS", "0")])
        .await;
    let submit = env.create_key("acme");
    let read = {
        let out = env.api_command(&["keys", "create", "--tenant", "acme", "--scope", "read"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let job = api
        .submit(&submit, json!({"kind": "executor.run", "tool": "noop"}))
        .await;

    let (status, me) = api.get(&read, "/v1/me").await;
    assert_eq!((status, me["role"].as_str()), (200, Some("read")), "{me}");
    let (status, body) = api.get(&read, &format!("/v1/jobs/{job}")).await;
    assert_eq!(status, 200, "{body}");
    let (status, page) = api.get(&read, "/v1/jobs").await;
    assert_eq!(
        (status, page["jobs"].as_array().map(Vec::len)),
        (200, Some(1))
    );

    for (path, body) in [
        ("/v1/jobs", json!({"kind": "executor.run", "tool": "noop"})),
        (&*format!("/v1/jobs/{job}/cancel"), json!({})),
        (
            "/v1/schedules",
            json!({"name": "n", "cron": "0 0 7 * * *",
                                 "target": {"kind": "executor.run", "tool": "noop"}}),
        ),
    ] {
        let (status, answer) = api.post(&read, path, &body).await;
        assert_eq!(status, 403, "{path}: {answer}");
        assert_eq!(answer["error"], "forbidden");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("may only read"),
            "{answer}"
        );
    }
    // Operator routes stay an operator's.
    let (status, _) = api.get(&read, "/v1/workers").await;
    assert_eq!(status, 403);
    assert_eq!(
        env.count_state("queued").await + env.count_state("running").await,
        1
    );
    env.finish().await;
}

#[tokio::test]
async fn a_key_with_a_lifetime_stops_at_its_end_and_keys_list_shows_keys_without_them() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_API_KEY_CACHE_SECS", "0")])
        .await;
    let out = env.api_command(&["keys", "create", "--tenant", "acme", "--expires-in", "2s"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("valid until"));
    let brief = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (status, _) = api.get(&brief, "/v1/me").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = api.get(&brief, "/v1/me").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    for bad in ["0d", "3w", "d", "1.5h"] {
        let out = env.api_command(&["keys", "create", "--tenant", "acme", "--expires-in", bad]);
        assert!(!out.status.success(), "{bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not a lifetime"),
            "{bad}"
        );
    }

    let ops = env.create_operator_key("ops");
    let globex = env.create_key("globex");
    let listed = env.api_command(&["keys", "list"]);
    assert!(listed.status.success());
    let table = String::from_utf8(listed.stdout).unwrap();
    assert!(table.starts_with("KEY"), "{table}");
    let row = |key: &str| {
        table
            .lines()
            .find(|line| line.starts_with(&format!("{}…", &key[..12])))
            .unwrap_or_else(|| panic!("{key} not listed:\n{table}"))
            .to_owned()
    };
    // Prefix, tenant, scope, then created, last used and expiry (a date and a time each),
    // and no revocation.
    let columns =
        |key: &str| -> Vec<String> { row(key).split_whitespace().map(str::to_owned).collect() };
    let used = columns(&brief);
    assert_eq!(used.len(), 10, "{used:?}");
    assert_eq!(
        (used[1].as_str(), used[2].as_str(), used[9].as_str()),
        ("acme", "submit", "-")
    );
    // Never used, never expiring: dashes.
    let unused = columns(&globex);
    assert_eq!(unused[5..], ["-", "-", "-"], "{unused:?}");
    assert_eq!(columns(&ops)[2], "operator");
    for key in [&brief, &ops] {
        assert!(!table.contains(key.as_str()), "a whole key is listed");
    }
    let acme_only = env.api_command(&["keys", "list", "--tenant", "acme"]);
    let acme_only = String::from_utf8(acme_only.stdout).unwrap();
    assert!(
        !acme_only.contains("globex") && !acme_only.contains("ops"),
        "{acme_only}"
    );
    env.finish().await;
}
