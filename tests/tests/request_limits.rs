//! What one request may hold: headers past `TASKFLEET_MAX_HEADER_BYTES` are a 431, a client
//! that sends its body slower than `TASKFLEET_BODY_TIMEOUT_SECS` is cut with a 408 (neither
//! leaves anything in the ledger), and a connection silent for `TASKFLEET_IDLE_TIMEOUT_SECS`
//! is closed.

use std::time::{Duration, Instant};

use taskfleet_tests::{TestEnv, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test]
async fn headers_past_the_limit_are_a_431_naming_it() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_MAX_HEADER_BYTES", "4096")])
        .await;
    let key = env.create_key("acme");

    let resp = api
        .http
        .post(api.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("x-padding", "p".repeat(5000))
        .json(&json!({"kind": "executor.run", "tool": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "headers_too_large", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("at most 4096"),
        "{body}"
    );
    assert_eq!(env.count_state("queued").await, 0);

    let resp = api
        .http
        .post(api.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("x-padding", "p".repeat(3000))
        .json(&json!({"kind": "executor.run", "tool": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    env.finish().await;
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_body_is_cut_with_a_408() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[("TASKFLEET_BODY_TIMEOUT_SECS", "1")]).await;
    let key = env.create_key("acme");
    let body = json!({"kind": "executor.run", "tool": "noop"}).to_string();
    let addr = api.base.trim_start_matches("http://");

    // Headers, then half the body, then nothing.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let sent = Instant::now();

    // Meanwhile the API serves everyone else.
    let (status, _) = api.get(&key, "/v1/jobs").await;
    assert_eq!(status, 200);

    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("request_timeout") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("an answer within the timeout and a margin");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1 s"), "{answer}");
    assert!(sent.elapsed() >= Duration::from_millis(900));
    assert_eq!(env.count_state("queued").await, 0);
    env.finish().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let mut env = TestEnv::new().await;
    let api = env
        .start_api(&[("TASKFLEET_IDLE_TIMEOUT_SECS", "20")])
        .await;
    let mut conn = TcpStream::connect(api.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let opened = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(40), conn.read(&mut buf))
        .await
        .expect("closed within the idle timeout and a margin");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        opened.elapsed() >= Duration::from_secs(19),
        "{:?}",
        opened.elapsed()
    );
    env.finish().await;
}
