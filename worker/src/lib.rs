//! taskfleet workers: apalis workers over our Redis list backend for the chosen queues, the handlers
//! that run each job kind, and the fleet-maintenance loops that the elected leader runs.

pub mod cli;
pub mod dispatcher;
pub mod event_sequencer;
pub mod executor;
pub mod fleet;
pub mod handlers;
pub mod leader;
pub mod llm_access;
pub mod metrics_server;
pub mod notifications;
pub mod reclaimer;
pub mod redis_queue;
pub mod scheduler;
