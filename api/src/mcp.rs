//! `/v1/mcp`: the five task tools as a Model Context Protocol server (Streamable HTTP
//! transport), so desktop agents can read and change a tenant's tasks with its API key. The
//! tools are the chat agent's: `taskfleet_jobs::task_tool` describes them and storage's
//! `TaskToolbox` runs them, so this file only lists and forwards them and the two cannot
//! drift apart. The endpoint speaks JSON-RPC, not REST, so it is outside the OpenAPI
//! document, like `/metrics`.

use std::sync::Arc;

use http_body_util::BodyExt;
use poem::{Endpoint, Request, Response, http};
use poem_openapi::auth::{Bearer, BearerAuthorization};
use rmcp::{
    ErrorData, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListToolsResult,
        PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    },
    service::{RequestContext, RoleServer},
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::never::NeverSessionManager,
    },
};
use serde_json::Value;
use taskfleet_jobs::task_tool::TaskTool;
use taskfleet_storage::{TaskToolbox, Tasks};
use uuid::Uuid;

use crate::{auth::tenant_of_key, observe::RequestId, state::AppState};

/// The MCP endpoint; `max_body_bytes` is the API's own request limit.
///
/// Stateless: every POST is a whole JSON-RPC exchange that any replica can answer. rmcp's
/// sessions live in one process's memory, and the API runs as several replicas behind a
/// load balancer without affinity, where a session's next request would land on a replica
/// that does not know it and be refused. The tools need no session: they send the client
/// nothing but their answer.
pub fn endpoint(max_body_bytes: usize) -> Mcp {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        // One `application/json` answer instead of an event stream of one event.
        .with_json_response(true)
        .with_max_request_body_bytes(max_body_bytes)
        // rmcp accepts only loopback `Host`s by default, to keep web pages from reaching a
        // server on a developer's machine through DNS rebinding. This one is reached under
        // whatever names the deployment gives it, and answers nobody without a tenant's key.
        .disable_allowed_hosts();
    Mcp {
        config,
        sessions: Arc::default(),
    }
}

pub struct Mcp {
    config: StreamableHttpServerConfig,
    sessions: Arc<NeverSessionManager>,
}

impl Endpoint for Mcp {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let state = req
            .data::<AppState>()
            .expect("AppState is attached to every route");
        // No key is poem-openapi's `AuthorizationError`, a bad one `unauthorized`: JSON 401s
        // as on the REST routes (whose `TenantKey` only poem-openapi's operations can run).
        let tenant = tenant_of_key(&req, Bearer::from_request(&req)?).await?;
        let tools = TaskTools {
            tasks: state.tasks.clone(),
            tenant: tenant.id,
            request_id: req.data::<RequestId>().map(|id| id.0.clone()),
        };
        // A handler per request, holding the tenant this request authenticated as, rather
        // than one handler reading it back from the `http::request::Parts` rmcp forwards
        // into each call's context: a call cannot lack its tenant, nor find another's.
        let service = StreamableHttpService::new(
            move || Ok(tools.clone()),
            self.sessions.clone(),
            self.config.clone(),
        );
        let response = service.handle(http::Request::from(req)).await;
        Ok(Response::from(response.map(|body| {
            body.map_err(|never| -> std::io::Error { match never {} })
        })))
    }
}

/// The task tools of one tenant.
#[derive(Clone)]
struct TaskTools {
    tasks: Tasks,
    tenant: Uuid,
    /// Recorded on the tasks the calls change, as the REST routes record theirs.
    request_id: Option<String>,
}

impl ServerHandler for TaskTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("taskfleet", env!("CARGO_PKG_VERSION")))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        TaskTool::named(name).map(describe)
    }

    async fn list_tools(
        &self,
        _page: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            TaskTool::ALL.map(describe).into(),
        ))
    }

    /// A tool's own error (an unknown task id, a bad date) is a result with `isError` that
    /// the model reads and can recover from; only a tool that does not exist, or a task store
    /// that does not answer, is a JSON-RPC error, as MCP has it.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if TaskTool::named(&request.name).is_none() {
            return Err(ErrorData::invalid_params(
                format!("Unknown tool: {}", request.name),
                None,
            ));
        }
        let toolbox = TaskToolbox::open(
            self.tasks.clone(),
            self.tenant,
            "mcp",
            self.request_id.clone(),
            None,
        )
        .await
        .map_err(|err| {
            tracing::warn!(%err, "mcp: the task store did not answer");
            ErrorData::internal_error("the task store did not answer; try again", None)
        })?;
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let result = match toolbox.call(&request.name, arguments).await {
            Ok(answer) => CallToolResult::structured(answer),
            Err(error) => CallToolResult::structured_error(error.to_json()),
        };
        Ok(result.into())
    }
}

/// A tool as MCP lists it: the catalogue's name, description and argument schema.
fn describe(tool: TaskTool) -> Tool {
    let Value::Object(schema) = tool.parameters() else {
        unreachable!("a tool's parameters are a JSON schema object")
    };
    Tool::new(tool.name(), tool.description(), schema)
}
