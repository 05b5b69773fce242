//! `embed.items`: embeds the tasks whose text is new or changed (or was embedded by another
//! embedder), upserts their vectors into the tenant's table, marks near-duplicates, and asks
//! for one `agent.prioritise` when done. Ids of deleted tasks, and of tasks whose connector
//! was deleted, have their vectors removed: deleting a task enqueues this job for its id.

use serde_json::json;
use taskfleet_agents::{EmbedError, Neighbour, Space};
use taskfleet_jobs::spec::EmbedItems;
use taskfleet_storage::{EmbedCandidate, LlmCallKind, LlmUsage, Side};
use taskfleet_telemetry::metrics;
use uuid::Uuid;

use super::{HandlerResult, JobContext, JobFailure};

/// Texts per call to the embedder, and between two progress reports.
const BATCH: usize = 64;
/// Neighbours looked at for a near-duplicate: the task itself and a few more.
const NEIGHBOURS: usize = 6;

pub async fn embed(job: &EmbedItems, ctx: &JobContext) -> HandlerResult {
    let tenant = ctx.tenant_id;
    let agents = &ctx.services.agents;
    let tasks = &ctx.services.tasks;
    let (found, unknown) = tasks
        .embed_candidates(tenant, &job.item_ids)
        .await
        .map_err(storage)?;
    let removed: Vec<Uuid> = unknown
        .iter()
        .copied()
        .chain(found.iter().filter(|t| t.source_removed).map(|t| t.id))
        .collect();
    agents
        .store
        .delete(tenant, &removed)
        .await
        .map_err(|err| JobFailure::retryable(err.to_string()))?;

    let embedder = agents.embedder().await.map_err(embed_failure)?;
    let space = embedder.space();
    let todo: Vec<&EmbedCandidate> = found
        .iter()
        .filter(|t| !t.source_removed && !t.embedded(&space.embedder))
        .collect();
    let unchanged = found.len() - todo.len() - (removed.len() - unknown.len());
    let mut duplicates = Vec::new();
    for (done, batch) in todo.chunks(BATCH).enumerate() {
        let texts: Vec<String> = batch.iter().map(|t| t.text()).collect();
        let embedded = embedder.embed(&texts).await.map_err(embed_failure)?;
        record_tokens(ctx, embedder.model(), embedded.input_tokens).await;
        let rows: Vec<(Uuid, Vec<f32>)> =
            batch.iter().map(|t| t.id).zip(embedded.vectors).collect();
        agents
            .store
            .upsert(tenant, &space, &rows)
            .await
            .map_err(|err| JobFailure::retryable(err.to_string()))?;
        let hashes: Vec<(Uuid, Vec<u8>)> = batch
            .iter()
            .map(|t| (t.id, t.content_hash.clone()))
            .collect();
        tasks
            .mark_embedded(tenant, &hashes, &space.embedder)
            .await
            .map_err(storage)?;
        // Oldest first (`found` is in id order), so a repeat in the same batch finds its
        // original already stored.
        for (task, (_, vector)) in batch.iter().zip(&rows) {
            if task.open {
                duplicates.extend(mark_duplicates(ctx, &space, task.id, vector).await?);
            }
        }
        let embedded = (done * BATCH + batch.len()).min(todo.len());
        ctx.progress(
            100.0 * embedded as f32 / todo.len() as f32,
            &format!("embedded {embedded} of {} tasks", todo.len()),
        )
        .await;
    }
    let prioritise = tasks
        .request_prioritise(tenant, &ctx.worker, ctx.request_id.clone())
        .await
        .map_err(|err| JobFailure::retryable(format!("could not ask for a ranking: {err}")))?;
    ctx.wake_dispatcher().await;
    Ok(json!({
        "embedder": space.embedder,
        "embedded": todo.len(),
        "unchanged": unchanged,
        "unknown": unknown,
        "vectors_removed": removed,
        "duplicates": duplicates,
        "prioritise_job": prioritise,
    }))
}

/// Points the task at the older original it repeats; or, when it is an original itself, points
/// the newer tasks already stored that repeat it at it (an embed job running beside this one
/// stored them before this task's vector). Returns the pairs marked.
async fn mark_duplicates(
    ctx: &JobContext,
    space: &Space,
    task: Uuid,
    vector: &[f32],
) -> Result<Vec<serde_json::Value>, JobFailure> {
    let (tenant, agents, tasks) = (ctx.tenant_id, &ctx.services.agents, &ctx.services.tasks);
    let threshold = agents.settings().duplicate_threshold;
    let neighbours = agents
        .store
        .nearest(tenant, space, vector, NEIGHBOURS)
        .await
        .map_err(|err| JobFailure::retryable(err.to_string()))?;
    // Most alike first.
    let similar: Vec<Neighbour> = neighbours
        .into_iter()
        .filter(|n| n.task_id != task && n.similarity >= threshold)
        .collect();
    let ids: Vec<Uuid> = similar.iter().map(|n| n.task_id).collect();
    let older = tasks
        .originals_beside(tenant, task, &ids, Side::Older)
        .await
        .map_err(storage)?;
    let original = similar.iter().find(|n| older.contains(&n.task_id));
    tasks
        .set_duplicate(tenant, task, original.map(|n| (n.task_id, n.similarity)))
        .await
        .map_err(storage)?;
    if let Some(original) = original {
        return Ok(vec![pair(task, original)]);
    }
    let newer = tasks
        .originals_beside(tenant, task, &ids, Side::Newer)
        .await
        .map_err(storage)?;
    let mut marked = Vec::new();
    for repeat in similar.iter().filter(|n| newer.contains(&n.task_id)) {
        tasks
            .set_duplicate(tenant, repeat.task_id, Some((task, repeat.similarity)))
            .await
            .map_err(storage)?;
        marked.push(pair(
            repeat.task_id,
            &Neighbour {
                task_id: task,
                similarity: repeat.similarity,
            },
        ));
    }
    Ok(marked)
}

fn pair(task: Uuid, original: &Neighbour) -> serde_json::Value {
    json!({"task": task, "duplicate_of": original.task_id, "similarity": original.similarity})
}

fn embed_failure(err: EmbedError) -> JobFailure {
    match err {
        EmbedError::Rejected | EmbedError::Unusable(_) => JobFailure::permanent(err.to_string()),
        // A model file missing or damaged is the operator's to mend; the job waits for it.
        EmbedError::RateLimited { .. } | EmbedError::Unavailable(_) | EmbedError::Model(_) => {
            JobFailure {
                retry_after: err.retry_after(),
                ..JobFailure::retryable(err.to_string())
            }
        }
    }
}

fn storage(err: sqlx::Error) -> JobFailure {
    JobFailure::retryable(format!("the task store failed: {err}"))
}

/// Records what a provider charged for a batch, as the tenant's `embed` usage (it counts
/// against the month's budget; embedding is not refused for it, so the pipeline never
/// stalls on a spent budget).
async fn record_tokens(ctx: &JobContext, model: &str, tokens: u64) {
    if tokens == 0 {
        return;
    }
    metrics::LLM_TOKENS
        .with_label_values(&[&LlmCallKind::Embed.name(), model, "input"])
        .inc_by(tokens);
    let recorded = ctx
        .services
        .budgets
        .record(LlmUsage {
            tenant: ctx.tenant_id,
            job: Some(ctx.job_id),
            model,
            kind: LlmCallKind::Embed,
            input_tokens: i64::try_from(tokens).unwrap_or(i64::MAX),
            output_tokens: 0,
        })
        .await;
    if let Err(err) = recorded {
        tracing::warn!(%err, "could not record the embedding's token usage");
    }
}
