//! `agent.prioritise`: scores the tenant's open, original tasks with the formula (ADR 0011),
//! picks each one's horizon and its rank within it and, when an LLM is configured, has the
//! model review the formula's top 20 of each horizon and choose its top 3. The model's
//! answer is checked against the candidates; when it fails or answers off-schema, the
//! formula's ranking stands and the result says why. Every placement is stored in one
//! statement; the first three of each horizon are the focus lists.

use std::{collections::HashMap, sync::Arc};

use chrono::Utc;
use chrono_tz::Tz;
use serde_json::{Value, json};
use taskfleet_agents::{
    Candidate, LlmError, Pick, Ranked, ReviewCandidate, ReviewError, Reviewer, formula, llm_review,
};
use taskfleet_jobs::{Horizon, spec::AgentPrioritise, wire};
use taskfleet_storage::{LlmCallKind, Placement, RankCandidate};
use uuid::Uuid;

use super::{HandlerResult, JobContext, JobFailure};
use crate::llm_access::{self, JobBudget};

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
        .iter()
        .map(|row| Candidate {
            id: row.id,
            source_kind: row.source_kind.clone(),
            title: row.title.clone(),
            labels: row.labels.clone(),
            due_at: row.due_at,
            updated_at: row.updated_at,
        })
        .collect();
    let weights = ctx.services.agents.settings().priority_weights;
    let now = Utc::now();
    let mut ranked = formula::rank(&candidates, now, zone, weights);
    let mut ranked_by: HashMap<Uuid, String> = HashMap::new();
    let mut review = Value::Null;
    let mut reviewed_by = None;
    // A provider that cannot be used (its key no longer opens, its URL is refused) skips
    // the review: the formula's ranking stands and the result says why.
    let llm = match llm_access::tenant_llm(ctx).await {
        Ok(llm) => llm,
        Err(unusable) => {
            review = json!({"error": unusable.message});
            None
        }
    };
    if let Some(llm) = llm {
        let reviewer = Reviewer::new(llm.model.clone());
        let shortlist = shortlist(&ranked, &rows);
        let today = now.with_timezone(&zone).date_naive();
        let budget = Arc::new(JobBudget::new(ctx, LlmCallKind::Prioritise, &llm.model));
        let outcome = match llm.breaker.admit() {
            Ok(permit) => {
                let outcome = reviewer
                    .review(&shortlist, today, zone.name(), budget.clone())
                    .await;
                match &outcome {
                    Err(error) if error.is_outage() => permit.failed(),
                    _ => permit.succeeded(),
                }
                outcome
            }
            Err(wait) => Err(ReviewError::Llm(LlmError::Unavailable(format!(
                "the LLM endpoint is failing; calls to it pause for {}s",
                wait.as_secs().max(1)
            )))),
        };
        let usage = budget.spent();
        let usage = json!({"input_tokens": usage.input, "output_tokens": usage.output});
        review = match outcome {
            Ok(done) => {
                apply(&mut ranked, &done.picks);
                for pick in &done.picks {
                    ranked_by.insert(pick.id, reviewer.model().to_owned());
                }
                reviewed_by = Some(reviewer.model().to_owned());
                json!({"model": reviewer.model(), "picks": done.picks.len(), "usage": usage})
            }
            Err(err) => {
                json!({"model": reviewer.model(), "error": err.to_string(), "usage": usage})
            }
        };
    }
    let placements: Vec<Placement> = ranked
        .iter()
        .map(|r| placement(r, ranked_by.get(&r.id).map_or("formula", String::as_str)))
        .collect();
    tasks
        .store_ranking(ctx.tenant_id, &placements)
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
        "ranked_by": reviewed_by.as_deref().filter(|_| !ranked_by.is_empty()).unwrap_or("formula"),
        "review": review,
        "time_zone": zone.name(),
        "today": focus(Horizon::Today),
        "week": focus(Horizon::Week),
        "month": focus(Horizon::Month),
    }))
}

/// A task's place as the ranking decided it, as stored.
pub fn placement(ranked: &Ranked, ranked_by: &str) -> Placement {
    Placement {
        id: ranked.id,
        urgency: ranked.scores.urgency,
        importance: ranked.scores.importance,
        recency: ranked.scores.recency,
        source_signal: ranked.scores.source_signal,
        priority: ranked.priority,
        horizon: wire::name(&ranked.horizon),
        rank: ranked.rank as i32,
        reason: ranked.reason.clone(),
        ranked_by: ranked_by.to_owned(),
    }
}

/// The formula's first [`llm_review::CANDIDATES_PER_HORIZON`] of each horizon, as the
/// reviewer is shown them.
fn shortlist(ranked: &[Ranked], rows: &[RankCandidate]) -> Vec<ReviewCandidate> {
    let rows: HashMap<Uuid, &RankCandidate> = rows.iter().map(|row| (row.id, row)).collect();
    ranked
        .iter()
        .filter(|r| r.rank as usize <= llm_review::CANDIDATES_PER_HORIZON)
        .map(|r| {
            let row = rows[&r.id];
            ReviewCandidate {
                id: r.id,
                horizon: r.horizon,
                formula_rank: r.rank,
                title: row.title.clone(),
                snippet: row.snippet.clone(),
                source_kind: row.source_kind.clone(),
                labels: row.labels.clone(),
                due_at: row.due_at,
                priority: r.priority,
                reason: r.reason.clone(),
            }
        })
        .collect()
}

/// Puts the model's picks first in their horizons, in its order and with its reasons; the
/// rest of each horizon follows in the formula's order.
fn apply(ranked: &mut [Ranked], picks: &[Pick]) {
    let picked: HashMap<Uuid, &Pick> = picks.iter().map(|p| (p.id, p)).collect();
    for horizon in [Horizon::Today, Horizon::Week, Horizon::Month] {
        let chosen = picks.iter().filter(|p| p.horizon == horizon).count() as u32;
        let mut next = chosen;
        let mut members: Vec<&mut Ranked> =
            ranked.iter_mut().filter(|r| r.horizon == horizon).collect();
        members.sort_by_key(|r| r.rank);
        for task in members {
            match picked.get(&task.id) {
                Some(pick) => {
                    task.rank = pick.rank;
                    task.reason = pick.reason.clone();
                }
                None => {
                    next += 1;
                    task.rank = next;
                }
            }
        }
    }
    ranked.sort_by_key(|r| (r.horizon, r.rank));
}
