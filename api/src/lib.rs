//! The taskfleet REST service: typed job submission and inspection over the Postgres ledger,
//! live event streams, fleet views (queues, workers, the audit log), the chat assistant with its LLM
//! settings and token budgets, the task tools over MCP (`/v1/mcp`), health and readiness, Prometheus metrics, the dashboard, the
//! OpenAPI document and Swagger UI.

pub mod app;
mod audit;
mod auth;
mod chat;
pub mod cli;
mod connectors;
mod conversations;
mod cors;
mod dashboard;
mod error;
mod events;
mod executor_tools;
mod fleet;
mod health;
mod jobs;
mod json;
mod jwks;
mod jwt;
mod llm;
mod mcp;
mod oauth_callback;
mod observe;
mod openapi_document;
mod paging;
mod rate_limit;
mod request_limits;
mod schedules;
mod state;
mod task_graph;
mod tasks;
mod tenant_limits;
mod test_all;
mod usage;

pub use app::{build_app, serve};
pub use state::AppState;
