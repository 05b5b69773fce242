//! The taskfleet REST service: typed job submission and inspection over the Postgres ledger,
//! health and readiness, the OpenAPI document and Swagger UI.

pub mod app;
mod auth;
pub mod cli;
mod error;
mod events;
mod health;
mod jobs;
mod schedules;
mod state;

pub use app::{build_app, serve};
pub use state::AppState;
