//! What the API and the workers report about themselves: Prometheus metrics and logs.
//! Both binaries share these definitions, so a metric means the same wherever it appears.

pub mod logs;
pub mod metrics;
