//! The fleet's Prometheus metrics. Each process registers the families it reports
//! ([`register_api`] or [`register_worker`]) and serves them with [`render`]; the
//! `process_*` families (memory, CPU, file descriptors) come with the default registry.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, TextEncoder,
    core::Collector,
};

/// From half a millisecond (a warm pickup) to a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Job runtimes: from a no-op to a long ingest.
const RUNTIME_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric definition")
}

// --- Reported by workers ---

/// Attempts by how they ended: `succeeded`, `retry` (failed, will run again), `dead`
/// (failed, no attempts left) or `cancelled`.
pub static JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "taskfleet_jobs_total",
        "Job attempts ended, by queue, kind and outcome (succeeded, retry, dead, cancelled), counted by the worker that recorded the outcome (the leader's reclaimer for workers that died).",
        &["queue", "kind", "outcome"],
    )
});
pub static JOB_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "taskfleet_job_duration_seconds",
        "Time from a job attempt's start to its outcome being recorded.",
        &["queue", "kind"],
        RUNTIME_BUCKETS,
    )
});
pub static JOB_QUEUE_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "taskfleet_job_queue_wait_seconds",
        "Pickup latency: time from a job being due (submitted, or its run_at) to its start.",
        &["queue", "kind"],
        LATENCY_BUCKETS,
    )
});
pub static WORKER_ACTIVE_JOBS: LazyLock<IntGauge> = LazyLock::new(|| {
    IntGauge::new(
        "taskfleet_worker_active_jobs",
        "Jobs this worker is running now.",
    )
    .expect("valid metric definition")
});
pub static WORKER_CONCURRENCY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "taskfleet_worker_concurrency",
        "Jobs this worker runs at once, by queue.",
        &["queue"],
    )
});
pub static WORKER_IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    IntGauge::new(
        "taskfleet_worker_is_leader",
        "1 while this worker is the fleet's elected leader.",
    )
    .expect("valid metric definition")
});
pub static JOBS_DISPATCHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "taskfleet_jobs_dispatched_total",
        "Jobs moved from the ledger into a queue's Redis window: by the leader's dispatcher, \
         or by the API for a lone submission to an empty queue.",
        &["queue"],
    )
});
pub static LEASES_RECLAIMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "taskfleet_leases_reclaimed_total",
        "Running jobs whose lease lapsed and the leader's reclaimer took back.",
        &["queue"],
    )
});
pub static STALE_WRITES_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "taskfleet_stale_writes_rejected_total",
        "Outcomes this worker wrote under a superseded lease epoch, refused by the ledger.",
        &["queue"],
    )
});
pub static RETENTION_DELETED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "taskfleet_retention_deleted_total",
        "Rows the leader's job cleaner deleted past their retention, by table (jobs, job_events, \
         schedule_firings, audit_events).",
        &["table"],
    )
});

// --- Reported by the API ---

pub static HTTP_REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "taskfleet_http_request_duration_seconds",
        "HTTP requests served, by route template, method and status.",
        &["route", "method", "status"],
        LATENCY_BUCKETS,
    )
});
/// Read from the ledger at scrape time; every API replica reports the same values.
pub static QUEUE_JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "taskfleet_queue_jobs",
        "Jobs in the ledger by queue and state: every scheduled, queued, running and retrying \
         job, and the succeeded, dead and cancelled ones that finished in the last 15 minutes \
         (same on every API replica: aggregate with max).",
        &["queue", "state"],
    )
});
pub static QUEUE_PAUSED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "taskfleet_queue_paused",
        "1 while a queue is paused by an operator.",
        &["queue"],
    )
});
/// Without labels; a vector only so that it can be dropped when the ledger is unreadable.
pub static WORKERS_ONLINE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "taskfleet_workers_online",
        "Worker processes with a recent heartbeat in the ledger.",
        &[],
    )
});
pub static SSE_CLIENTS: LazyLock<IntGauge> = LazyLock::new(|| {
    IntGauge::new(
        "taskfleet_sse_clients",
        "Event streams this API process is serving now.",
    )
    .expect("valid metric definition")
});

// --- Reported by both ---

pub static PROVIDER_REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "taskfleet_provider_request_duration_seconds",
        "Outbound requests to SaaS and LLM providers, by provider and outcome (ok, client_error, \
         rate_limited, server_error, timeout, unreachable), each try of a retried request counted.",
        &["provider", "outcome"],
        LATENCY_BUCKETS,
    )
});
/// 0 closed (calls flow), 1 half-open (one probe call in flight), 2 open (calls fail fast).
pub static PROVIDER_CIRCUIT_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "taskfleet_provider_circuit_state",
        "Circuit breaker of each provider in this process: 0 closed, 1 half-open, 2 open.",
        &["provider"],
    )
});
/// Tokens spent on LLM calls, by kind of call (chat, prioritise and embed in workers, test in
/// the API), model and direction (input: the prompt; output: the answer).
pub static LLM_TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "taskfleet_llm_tokens_total",
        "Tokens spent on LLM calls, by kind of call, model and direction (input, output).",
        &["kind", "model", "direction"],
    )
});

/// The `outcome` label of an attempt that left its job in ledger state `state`; `None` for
/// `queued` (handed back or reclaimed to run again: not an attempt's end).
pub fn outcome_of(state: &str) -> Option<&'static str> {
    match state {
        "succeeded" => Some("succeeded"),
        "retrying" => Some("retry"),
        "dead" => Some("dead"),
        "cancelled" => Some("cancelled"),
        _ => None,
    }
}

fn register(collectors: Vec<Box<dyn Collector>>) {
    for collector in collectors {
        // Registering twice (a second call in one process) is harmless: the first stays.
        let _ = prometheus::register(collector);
    }
}

/// The families a worker process reports.
pub fn register_worker() {
    register(vec![
        Box::new(JOBS.clone()),
        Box::new(JOB_DURATION.clone()),
        Box::new(JOB_QUEUE_WAIT.clone()),
        Box::new(WORKER_ACTIVE_JOBS.clone()),
        Box::new(WORKER_CONCURRENCY.clone()),
        Box::new(WORKER_IS_LEADER.clone()),
        Box::new(JOBS_DISPATCHED.clone()),
        Box::new(LEASES_RECLAIMED.clone()),
        Box::new(STALE_WRITES_REJECTED.clone()),
        Box::new(RETENTION_DELETED.clone()),
        Box::new(PROVIDER_REQUEST_DURATION.clone()),
        Box::new(PROVIDER_CIRCUIT_STATE.clone()),
        Box::new(LLM_TOKENS.clone()),
    ]);
}

/// The families an API process reports.
pub fn register_api() {
    register(vec![
        Box::new(HTTP_REQUEST_DURATION.clone()),
        Box::new(QUEUE_JOBS.clone()),
        Box::new(QUEUE_PAUSED.clone()),
        Box::new(WORKERS_ONLINE.clone()),
        Box::new(SSE_CLIENTS.clone()),
        Box::new(PROVIDER_REQUEST_DURATION.clone()),
        Box::new(PROVIDER_CIRCUIT_STATE.clone()),
        Box::new(JOBS_DISPATCHED.clone()),
        Box::new(LLM_TOKENS.clone()),
    ]);
}

/// Everything registered in this process, in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut out)
        .expect("the text encoder writes to memory");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_families_render_with_the_process_ones() {
        register_api();
        PROVIDER_REQUEST_DURATION
            .with_label_values(&["github", "rate_limited"])
            .observe(0.2);
        PROVIDER_CIRCUIT_STATE.with_label_values(&["github"]).set(2);
        let text = render();
        assert!(text.contains(
            "taskfleet_provider_request_duration_seconds_count{outcome=\"rate_limited\",provider=\"github\"} 1"
        ));
        assert!(text.contains("taskfleet_provider_circuit_state{provider=\"github\"} 2"));
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
