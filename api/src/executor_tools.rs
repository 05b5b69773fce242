//! `GET /v1/executor/tools`: what `executor.run` may name: the built-in tools and the
//! operator's allow-listed commands with their arguments and limits.

use poem::web::Data;
use poem_openapi::{Object, OpenApi, payload::Json};
use taskfleet_jobs::{BuiltinTool, CommandTool, executor_commands::CommandLimits};

use crate::{auth::TenantKey, error::ApiError, state::AppState};

/// One tool a job may name.
#[derive(Debug, Object)]
pub struct ExecutorToolInfo {
    pub name: String,
    /// `builtin` or `command`.
    pub kind: String,
    pub description: String,
    /// A command's extra arguments: each must match one of these patterns whole. Empty: the
    /// tool takes none.
    pub allowed_args: Vec<String>,
    /// Most extra arguments a job may pass (commands).
    #[oai(skip_serializing_if_is_none)]
    pub max_args: Option<u64>,
    /// What a command's run may use (commands).
    #[oai(skip_serializing_if_is_none)]
    pub limits: Option<CommandLimits>,
    /// Whether the files the command changes come back in the result.
    pub writes_files: bool,
    /// Whether the command may reach the network.
    pub network: bool,
    /// Exit codes that are the command's verdict; any other is a failed attempt. Empty: every
    /// exit code is a verdict.
    pub result_exit_codes: Vec<i32>,
}

#[derive(Debug, Object)]
pub struct ExecutorTools {
    pub tools: Vec<ExecutorToolInfo>,
}

impl From<&CommandTool> for ExecutorToolInfo {
    fn from(tool: &CommandTool) -> ExecutorToolInfo {
        ExecutorToolInfo {
            name: tool.name.clone(),
            kind: "command".into(),
            description: tool.description.clone(),
            allowed_args: tool.allowed_args.iter().map(|p| p.source.clone()).collect(),
            max_args: Some(tool.max_args as u64),
            limits: Some(tool.limits),
            writes_files: tool.writes_files,
            network: tool.network,
            result_exit_codes: tool.result_exit_codes.clone(),
        }
    }
}

pub struct ExecutorToolsApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Jobs")]
impl ExecutorToolsApi {
    /// Tools an `executor.run` job may name
    ///
    /// The built-in tools, then the commands the operator allows
    /// (`TASKFLEET_EXECUTOR_TOOLS`), with the arguments each takes and the limits its runs
    /// are held to. Programs and environment values are not shown.
    #[oai(
        path = "/executor/tools",
        method = "get",
        operation_id = "listExecutorTools"
    )]
    async fn tools(
        &self,
        state: Data<&AppState>,
        _auth: TenantKey,
    ) -> Result<Json<ExecutorTools>, ApiError> {
        let builtin =
            BuiltinTool::available(state.executor.fault_injection).map(|tool| ExecutorToolInfo {
                name: tool.name().into(),
                kind: "builtin".into(),
                description: tool.describe().into(),
                allowed_args: Vec::new(),
                max_args: None,
                limits: None,
                writes_files: false,
                network: false,
                result_exit_codes: Vec::new(),
            });
        let commands = state
            .executor
            .commands
            .tools()
            .map(|tool| ExecutorToolInfo::from(tool.as_ref()));
        Ok(Json(ExecutorTools {
            tools: builtin.chain(commands).collect(),
        }))
    }
}
