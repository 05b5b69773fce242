//! What the embed and agent queues record on tasks: which text was embedded with which
//! embedder, which task repeats an older one, and the prioritiser's scores and places.
//! The vectors themselves live in the vector store (the `agents` crate); these rows say
//! what the store holds, so an unchanged text is never embedded twice.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use taskfleet_jobs::{
    JobSpec,
    spec::{AgentPrioritise, EmbedItems, JobOptions},
};
use uuid::Uuid;

use crate::{InsertError, Inserted, Ledger, NewJob, Tasks};

/// Tasks per `embed.items` job when a whole tenant is embedded again.
const REEMBED_CHUNK: usize = 1_000;

/// The longest text sent to an embedder, in characters.
pub const EMBED_TEXT_CHARS: usize = 2_000;

/// A task as the embed job sees it.
#[derive(Debug, Clone)]
pub struct EmbedCandidate {
    pub id: Uuid,
    pub title: String,
    pub snippet: String,
    pub content_hash: Vec<u8>,
    pub embedded_hash: Option<Vec<u8>>,
    pub embedded_with: Option<String>,
    pub open: bool,
    /// Its connector was deleted: its vector goes, it is no one's original any more.
    pub source_removed: bool,
}

impl EmbedCandidate {
    /// Whether the store already holds this text's vector from `embedder`.
    pub fn embedded(&self, embedder: &str) -> bool {
        self.embedded_with.as_deref() == Some(embedder)
            && self.embedded_hash.as_deref() == Some(self.content_hash.as_slice())
    }

    /// What gets embedded: the title, then the snippet, at most [`EMBED_TEXT_CHARS`]
    /// characters (models read a few hundred tokens; endpoints refuse what is far longer).
    pub fn text(&self) -> String {
        let text = if self.snippet.is_empty() {
            self.title.clone()
        } else {
            format!("{}\n{}", self.title, self.snippet)
        };
        match text.char_indices().nth(EMBED_TEXT_CHARS) {
            Some((cut, _)) => text[..cut].to_owned(),
            None => text,
        }
    }
}

/// A task as the prioritiser sees it.
#[derive(Debug, Clone)]
pub struct RankCandidate {
    pub id: Uuid,
    pub source_kind: String,
    pub title: String,
    pub snippet: String,
    pub labels: Vec<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// Which tasks, by age, [`Tasks::originals_beside`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Older,
    Newer,
}

/// One task's place, as the prioritiser decided it.
#[derive(Debug, Clone)]
pub struct Placement {
    pub id: Uuid,
    pub urgency: f32,
    pub importance: f32,
    pub recency: f32,
    pub source_signal: f32,
    pub priority: f32,
    /// `today`, `week` or `month`.
    pub horizon: String,
    pub rank: i32,
    pub reason: String,
    /// `formula`, or the model that placed it.
    pub ranked_by: String,
}

impl Tasks {
    /// The tenant's tasks among `ids`, and the ids that are not (deleted, or never theirs).
    pub async fn embed_candidates(
        &self,
        tenant: Uuid,
        ids: &[Uuid],
    ) -> sqlx::Result<(Vec<EmbedCandidate>, Vec<Uuid>)> {
        let found: Vec<EmbedCandidate> = sqlx::query_as!(
            EmbedCandidate,
            r#"SELECT id, title, snippet, content_hash, embedded_hash, embedded_with,
                    status = 'open' AS "open!",
                    source_removed_at IS NOT NULL AS "source_removed!"
             FROM tasks WHERE tenant_id = $1 AND id = ANY($2) ORDER BY id"#,
            tenant,
            ids,
        )
        .fetch_all(&self.pool)
        .await?;
        let missing = ids
            .iter()
            .filter(|id| !found.iter().any(|task| task.id == **id))
            .copied()
            .collect();
        Ok((found, missing))
    }

    /// Records that the store holds the vectors of these texts (`(task, content_hash)`)
    /// from `embedder`. A task whose text changed meanwhile is left for its own embed job.
    pub async fn mark_embedded(
        &self,
        tenant: Uuid,
        embedded: &[(Uuid, Vec<u8>)],
        embedder: &str,
    ) -> sqlx::Result<()> {
        let ids: Vec<Uuid> = embedded.iter().map(|(id, _)| *id).collect();
        let hashes: Vec<&[u8]> = embedded.iter().map(|(_, h)| h.as_slice()).collect();
        sqlx::query!(
            "UPDATE tasks t SET embedded_hash = e.hash, embedded_with = $4, embedded_at = now()
             FROM UNNEST($2::uuid[], $3::bytea[]) AS e(id, hash)
             WHERE t.tenant_id = $1 AND t.id = e.id AND t.content_hash = e.hash",
            tenant,
            &ids,
            // Borrowed hashes: `as` gives their type, which the macro's check (`Vec<u8>`s)
            // would refuse.
            &hashes as &[&[u8]],
            embedder,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Of `candidates` (the neighbours of `task` in the store), the open originals on `side`
    /// of it by age, from another item at the source: the older ones are what `task` may
    /// repeat; the newer ones may repeat it (two embed jobs running at once each miss the
    /// other's vector, and whichever searches second finds the pair from the older side).
    pub async fn originals_beside(
        &self,
        tenant: Uuid,
        task: Uuid,
        candidates: &[Uuid],
        side: Side,
    ) -> sqlx::Result<Vec<Uuid>> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // $4: the older side (created before `task`), else the newer one.
        sqlx::query_scalar!(
            "SELECT o.id FROM tasks o JOIN tasks t ON t.tenant_id = o.tenant_id AND t.id = $2
             WHERE o.tenant_id = $1 AND o.id = ANY($3) AND o.id <> t.id
               AND o.status = 'open' AND o.duplicate_of IS NULL
               AND o.source_removed_at IS NULL
               AND CASE WHEN $4 THEN (o.created_at, o.id) < (t.created_at, t.id)
                        ELSE (o.created_at, o.id) > (t.created_at, t.id) END
               AND (o.source_kind, o.source_ref) <> (t.source_kind, t.source_ref)",
            tenant,
            task,
            candidates,
            side == Side::Older,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Points `task` at the original it repeats, or at none (its text no longer matches).
    pub async fn set_duplicate(
        &self,
        tenant: Uuid,
        task: Uuid,
        original: Option<(Uuid, f32)>,
    ) -> sqlx::Result<()> {
        sqlx::query!(
            "UPDATE tasks SET duplicate_of = $3, duplicate_similarity = $4,
                    rank = CASE WHEN $3::uuid IS NULL THEN rank END
             WHERE tenant_id = $1 AND id = $2
               AND (duplicate_of, duplicate_similarity) IS DISTINCT FROM ($3, $4)",
            tenant,
            task,
            original.map(|(id, _)| id),
            original.map(|(_, similarity)| similarity),
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Enqueues one `agent.prioritise` for the tenant unless one is already waiting; returns
    /// the job that will rank.
    pub async fn request_prioritise(
        &self,
        tenant: Uuid,
        actor: &str,
        request_id: Option<String>,
    ) -> Result<Uuid, InsertError> {
        let mut tx = self.pool.begin().await?;
        let id = prioritise_in(&mut tx, tenant, actor, request_id).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Enqueues `embed.items` jobs for every task whose vector came from another embedder
    /// than `embedder` (the fleet switched), in chunks; returns how many tasks. Chunks carry
    /// idempotency keys, so workers starting together enqueue each chunk once.
    pub async fn request_reembed(&self, embedder: &str, actor: &str) -> Result<usize, InsertError> {
        let stale: Vec<(Uuid, Vec<Uuid>)> = sqlx::query!(
            r#"SELECT tenant_id, array_agg(id ORDER BY id) AS "ids!" FROM tasks
             WHERE embedded_with IS NOT NULL AND embedded_with <> $1
               AND source_removed_at IS NULL
             GROUP BY tenant_id"#,
            embedder,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|row| (row.tenant_id, row.ids))
        .collect();
        let space = &hex::encode(Sha256::digest(embedder))[..12];
        let mut tx = self.pool.begin().await?;
        let mut count = 0;
        for (tenant, ids) in &stale {
            let jobs: Vec<NewJob> = ids
                .chunks(REEMBED_CHUNK)
                .map(|chunk| {
                    let spec = JobSpec::EmbedItems(EmbedItems {
                        item_ids: chunk.to_vec(),
                        options: JobOptions {
                            idempotency_key: Some(format!("reembed:{space}:{}", chunk[0])),
                            ..JobOptions::default()
                        },
                    });
                    NewJob::new(spec, None)
                })
                .collect();
            Ledger::insert_in(&mut tx, *tenant, &jobs, actor).await?;
            count += ids.len();
        }
        tx.commit().await?;
        Ok(count)
    }

    /// The tenant's time zone, and its open tasks that are not duplicates.
    pub async fn rank_candidates(
        &self,
        tenant: Uuid,
    ) -> sqlx::Result<(String, Vec<RankCandidate>)> {
        let zone: String =
            sqlx::query_scalar!("SELECT time_zone FROM tenants WHERE id = $1", tenant)
                .fetch_one(&self.pool)
                .await?;
        let tasks = sqlx::query_as!(
            RankCandidate,
            r#"SELECT id, source_kind, title, snippet, labels, due_at,
                    coalesce(source_updated_at, updated_at) AS "updated_at!"
             FROM tasks
             WHERE tenant_id = $1 AND status = 'open' AND duplicate_of IS NULL
             ORDER BY id"#,
            tenant,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok((zone, tasks))
    }

    /// Stores the prioritiser's placements in one statement, and takes the places of the
    /// tenant's tasks it did not place (done or duplicates since) away.
    pub async fn store_ranking(&self, tenant: Uuid, placements: &[Placement]) -> sqlx::Result<u64> {
        let mut tx = self.pool.begin().await?;
        let column = |f: fn(&Placement) -> f32| placements.iter().map(f).collect::<Vec<f32>>();
        let ids: Vec<Uuid> = placements.iter().map(|p| p.id).collect();
        let horizons: Vec<&str> = placements.iter().map(|p| p.horizon.as_str()).collect();
        let ranks: Vec<i32> = placements.iter().map(|p| p.rank).collect();
        let reasons: Vec<&str> = placements.iter().map(|p| p.reason.as_str()).collect();
        let ranked_by: Vec<&str> = placements.iter().map(|p| p.ranked_by.as_str()).collect();
        let stored = sqlx::query!(
            "UPDATE tasks t SET urgency = p.urgency, importance = p.importance,
                    recency = p.recency, source_signal = p.source_signal,
                    priority = p.priority, horizon = p.horizon, rank = p.rank,
                    reason = p.reason, ranked_by = p.ranked_by, ranked_at = now()
             FROM UNNEST($2::uuid[], $3::real[], $4::real[], $5::real[], $6::real[],
                         $7::real[], $8::text[], $9::int[], $10::text[], $11::text[])
                  AS p(id, urgency, importance, recency, source_signal, priority, horizon,
                       rank, reason, ranked_by)
             WHERE t.tenant_id = $1 AND t.id = p.id AND t.status = 'open'",
            tenant,
            &ids,
            &column(|p| p.urgency),
            &column(|p| p.importance),
            &column(|p| p.recency),
            &column(|p| p.source_signal),
            &column(|p| p.priority),
            // Borrowed text: `as` gives its type, which the macro's check (`String`s) would
            // refuse.
            &horizons as &[&str],
            &ranks,
            &reasons as &[&str],
            &ranked_by as &[&str],
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query!(
            "UPDATE tasks SET rank = NULL
             WHERE tenant_id = $1 AND rank IS NOT NULL AND NOT (id = ANY($2))",
            tenant,
            &ids,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }
}

/// [`Tasks::request_prioritise`] inside the caller's transaction.
pub(crate) async fn prioritise_in(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    actor: &str,
    request_id: Option<String>,
) -> Result<Uuid, InsertError> {
    // One asker at a time per tenant, so two finishing embed jobs leave one waiting.
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('prioritise:' || $1, 0))",
        tenant.to_string(),
    )
    .execute(&mut *tx)
    .await?;
    let waiting: Option<Uuid> = sqlx::query_scalar!(
        "SELECT id FROM jobs WHERE tenant_id = $1 AND kind = 'agent.prioritise'
           AND state IN ('scheduled', 'queued', 'retrying')
         LIMIT 1",
        tenant,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = waiting {
        return Ok(id);
    }
    let spec = JobSpec::AgentPrioritise(AgentPrioritise {
        options: Default::default(),
    });
    match Ledger::insert_in(tx, tenant, &[NewJob::new(spec, request_id)], actor)
        .await?
        .remove(0)
    {
        Inserted::Created(job) | Inserted::Existing(job) => Ok(job.id),
    }
}
