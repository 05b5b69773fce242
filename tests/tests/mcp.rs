//! `/v1/mcp` against the real API binary, Postgres and Redis, through rmcp's own client: the
//! five task tools listed and called with a tenant's key, their effects seen through the REST
//! API, a tool's error as a result with `isError`, one tenant blind to another's tasks, and
//! no key or a wrong one refused with the API's JSON 401.

use rmcp::{
    ClientLifecycleMode, ClientServiceExt, ServiceError,
    model::{CallToolRequestParams, CallToolResult, ErrorCode, ProtocolVersion},
    service::{RoleClient, RunningService},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::Value;
use taskfleet_tests::{Api, TestEnv, json};
use uuid::Uuid;

type Client = RunningService<RoleClient, ()>;

/// A client of tenant `key`. `Initialize` connects as desktop agents do today (the handshake);
/// `Discover` as the 2026-07-28 revision does (no handshake, every request self-contained).
async fn connect(api: &Api, key: &str, lifecycle: ClientLifecycleMode) -> Client {
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(api.url("/v1/mcp")).auth_header(key),
    );
    ().serve_with_lifecycle(transport, lifecycle)
        .await
        .expect("the client connects")
}

async fn call(client: &Client, tool: &str, arguments: Value) -> CallToolResult {
    let Value::Object(arguments) = arguments else {
        panic!("arguments are an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments))
        .await
        .unwrap_or_else(|err| panic!("{tool}: {err}"))
}

/// The JSON a result carries, checking that its text content says the same.
fn carried(result: &CallToolResult) -> Value {
    let text = result.content[0].as_text().expect("text content");
    let structured = result
        .structured_content
        .clone()
        .expect("structured content");
    assert_eq!(
        serde_json::from_str::<Value>(&text.text).unwrap(),
        structured
    );
    structured
}

/// A successful call's answer.
fn answer(result: &CallToolResult) -> Value {
    assert_eq!(result.is_error, Some(false), "{result:?}");
    carried(result)
}

/// A failed call's `{error, message}`.
fn tool_error(result: &CallToolResult) -> Value {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    carried(result)
}

#[tokio::test]
async fn the_task_tools_over_mcp_act_for_the_keys_tenant_only() {
    let mut env = TestEnv::new().await;
    let api = env.start_api(&[]).await;
    let acme_key = env.create_key("acme");
    let globex_key = env.create_key("globex");
    let acme = connect(&api, &acme_key, ClientLifecycleMode::Initialize).await;

    let mut names: Vec<String> = acme
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|tool| tool.name.into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "add_task",
            "complete_task",
            "delete_task",
            "list_tasks",
            "update_task"
        ]
    );

    let added = answer(&call(&acme, "add_task", json!({"title": "Buy milk"})).await);
    assert_eq!(added["task"]["title"], "Buy milk");
    let id: Uuid = added["task"]["id"].as_str().unwrap().parse().unwrap();
    let (status, page) = api.get(&acme_key, "/v1/tasks").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|task| task["id"] == id.to_string()),
        "{page}"
    );

    let listed = answer(&call(&acme, "list_tasks", json!({})).await);
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["tasks"][0]["id"], id.to_string());

    let updated = answer(
        &call(
            &acme,
            "update_task",
            json!({"task_id": id, "title": "Buy oat milk"}),
        )
        .await,
    );
    assert_eq!(updated["task"]["title"], "Buy oat milk");
    let (_, task) = api.get(&acme_key, &format!("/v1/tasks/{id}")).await;
    assert_eq!(task["title"], "Buy oat milk", "{task}");

    let completed = answer(&call(&acme, "complete_task", json!({"task_id": id})).await);
    assert_eq!(completed["task"]["status"], "done");
    let (_, task) = api.get(&acme_key, &format!("/v1/tasks/{id}")).await;
    assert_eq!(task["status"], "done", "{task}");

    // A tool's mistake is a result the model reads, not a protocol error.
    let unknown = Uuid::now_v7();
    let missing = tool_error(&call(&acme, "complete_task", json!({"task_id": unknown})).await);
    assert_eq!(missing["error"], "not_found", "{missing}");
    let invalid = tool_error(&call(&acme, "add_task", json!({})).await);
    assert_eq!(invalid["error"], "invalid_argument", "{invalid}");
    // A tool that does not exist is the client's protocol error.
    match acme
        .call_tool(CallToolRequestParams::new("drop_tables"))
        .await
    {
        Err(ServiceError::McpError(error)) => assert_eq!(error.code, ErrorCode::INVALID_PARAMS),
        other => panic!("an unknown tool answered {other:?}"),
    }

    // Another tenant's key sees none of acme's tasks and cannot touch them.
    let discover = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let globex = connect(&api, &globex_key, discover).await;
    let theirs = answer(&call(&globex, "list_tasks", json!({"status": "all"})).await);
    assert_eq!(theirs, json!({"tasks": [], "total": 0}));
    for tool in ["complete_task", "delete_task"] {
        let refused = tool_error(&call(&globex, tool, json!({"task_id": id})).await);
        assert_eq!(refused["error"], "not_found", "{tool}: {refused}");
    }
    let (status, task) = api.get(&acme_key, &format!("/v1/tasks/{id}")).await;
    assert_eq!((status, &task["status"]), (200, &json!("done")), "{task}");

    // Stateless: another replica answers a call without the handshake the client made with
    // the first, as a load balancer without affinity would send it.
    let replica = env.start_api(&[]).await;
    let response = replica
        .http
        .post(replica.url("/v1/mcp"))
        .bearer_auth(&acme_key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "list_tasks", "arguments": {"status": "all"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["result"]["structuredContent"]["total"], 1, "{reply}");

    let deleted = answer(&call(&acme, "delete_task", json!({"task_id": id})).await);
    assert_eq!(deleted["deleted"]["id"], id.to_string());
    let (status, _) = api.get(&acme_key, &format!("/v1/tasks/{id}")).await;
    assert_eq!(status, 404);

    // Without a tenant's key nothing reaches the tools: the API's own JSON 401.
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "curl", "version": "1"}},
    });
    for key in [None, Some("tfk_not_a_key")] {
        let mut request = api
            .http
            .post(api.url("/v1/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "key {key:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "key {key:?}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }

    acme.cancel().await.unwrap();
    globex.cancel().await.unwrap();
    env.finish().await;
}
