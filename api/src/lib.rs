//! The taskfleet REST service: typed job submission and inspection over the Postgres ledger,
//! live event streams, fleet views (queues, workers), health and readiness, Prometheus
//! metrics, the dashboard, the OpenAPI document and Swagger UI.

pub mod app;
mod auth;
pub mod cli;
mod connectors;
mod dashboard;
mod error;
mod events;
mod fleet;
mod health;
mod jobs;
mod json;
mod oauth_callback;
mod observe;
mod paging;
mod schedules;
mod state;
mod task_graph;
mod tasks;
mod test_all;

pub use app::{build_app, serve};
pub use state::AppState;
