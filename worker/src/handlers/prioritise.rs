//! `agent.prioritise`: scores the tenant's open, original tasks with the formula (ADR 0011),
//! picks each one's horizon and its rank within it, and stores them in one statement. The
//! first three of each horizon are the focus lists `GET /v1/tasks?horizon=` shows.

use chrono::Utc;
use chrono_tz::Tz;
use serde_json::{Value, json};
use taskfleet_agents::{Candidate, formula};
use taskfleet_jobs::{Horizon, spec::AgentPrioritise, wire};
use taskfleet_storage::Placement;

use super::{HandlerResult, JobContext, JobFailure};

/// Ranked tasks named in the job's result per horizon.
const FOCUS: u32 = 3;

pub async fn prioritise(_job: &AgentPrioritise, ctx: &JobContext) -> HandlerResult {
    let tasks = &ctx.services.tasks;
    let (zone, rows) = tasks
        .rank_candidates(ctx.tenant_id)
        .await
        .map_err(|err| JobFailure::retryable(format!("the task store failed: {err}")))?;
    // The zone was checked when it was set; an unknown one ranks in UTC rather than not at all.
    let zone: Tz = zone.parse().unwrap_or(Tz::UTC);
    let candidates: Vec<Candidate> = rows
        .into_iter()
        .map(|row| Candidate {
            id: row.id,
            source_kind: row.source_kind,
            title: row.title,
            labels: row.labels,
            due_at: row.due_at,
            updated_at: row.updated_at,
        })
        .collect();
    let weights = ctx.services.agents.settings().priority_weights;
    let ranked = formula::rank(&candidates, Utc::now(), zone, weights);
    let placements: Vec<Placement> = ranked
        .iter()
        .map(|r| Placement {
            id: r.id,
            urgency: r.scores.urgency,
            importance: r.scores.importance,
            recency: r.scores.recency,
            source_signal: r.scores.source_signal,
            priority: r.priority,
            horizon: wire::name(&r.horizon),
            rank: r.rank as i32,
            reason: r.reason.clone(),
        })
        .collect();
    tasks
        .store_ranking(ctx.tenant_id, &placements, "formula")
        .await
        .map_err(|err| JobFailure::retryable(format!("could not store the ranking: {err}")))?;
    let focus = |horizon: Horizon| -> Value {
        ranked
            .iter()
            .filter(|r| r.horizon == horizon && r.rank <= FOCUS)
            .map(|r| json!({"task": r.id, "rank": r.rank, "priority": r.priority, "reason": r.reason}))
            .collect()
    };
    Ok(json!({
        "ranked": ranked.len(),
        "ranked_by": "formula",
        "time_zone": zone.name(),
        "today": focus(Horizon::Today),
        "week": focus(Horizon::Week),
        "month": focus(Horizon::Month),
    }))
}
