//! The vector store: lancedb, embedded in the worker (no server). One table per tenant and
//! embedder, so vectors of different coordinate spaces never meet in a search and a tenant's
//! vectors go with one drop. Rows are keyed by task id and upserted (`merge_insert`); the
//! task itself lives in Postgres, the store holds only its vector.
//!
//! Several workers may write one table at once: lancedb commits optimistically and retries
//! a conflicting commit itself; what still conflicts is retried here a few times more.

use std::{sync::Arc, time::Duration};

use arrow_array::{
    Array, FixedSizeListArray, Float32Array, RecordBatch, RecordBatchIterator, StringArray,
    types::Float32Type,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lancedb::{
    Connection, DistanceType,
    database::CreateTableMode,
    query::{ExecutableQuery, QueryBase, Select},
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Tries of one write before the job's own retry takes over.
const WRITE_TRIES: u32 = 5;

#[derive(Debug, thiserror::Error)]
#[error("vector store: {0}")]
pub struct StoreError(String);

impl From<lancedb::Error> for StoreError {
    fn from(err: lancedb::Error) -> StoreError {
        StoreError(err.to_string())
    }
}

impl From<arrow_schema::ArrowError> for StoreError {
    fn from(err: arrow_schema::ArrowError) -> StoreError {
        StoreError(err.to_string())
    }
}

/// A task's nearest neighbour and how alike they are (cosine similarity, 1 = same).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    pub task_id: Uuid,
    pub similarity: f32,
}

/// The coordinate space a table holds: the embedder's id and dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    pub embedder: String,
    pub dimensions: usize,
}

#[derive(Clone)]
pub struct VectorStore {
    db: Connection,
    uri: String,
}

impl std::fmt::Debug for VectorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorStore")
            .field("uri", &self.uri)
            .finish()
    }
}

impl VectorStore {
    /// Opens (creating when it is a local directory) the store at `uri`, and reads its
    /// table list once so a store that cannot be read fails here, not in the first job.
    pub async fn open(uri: &str) -> Result<VectorStore, StoreError> {
        if !uri.contains("://") {
            std::fs::create_dir_all(uri)
                .map_err(|err| StoreError(format!("cannot create {uri}: {err}")))?;
        }
        let db = lancedb::connect(uri)
            // Every read sees the other workers' latest commits.
            .read_consistency_interval(Duration::ZERO)
            .execute()
            .await?;
        let store = VectorStore {
            db,
            uri: uri.to_owned(),
        };
        store.check().await?;
        Ok(store)
    }

    /// Whether the store answers (the worker's readiness).
    pub async fn check(&self) -> Result<(), StoreError> {
        // lancedb lists a missing local directory as empty: look at the directory itself.
        if !self.uri.contains("://") {
            std::fs::read_dir(&self.uri)
                .map_err(|err| StoreError(format!("cannot read {}: {err}", self.uri)))?;
        }
        self.db.table_names().limit(1).execute().await?;
        Ok(())
    }

    /// Inserts or replaces the vectors of `tasks` in the tenant's table for `space`.
    pub async fn upsert(
        &self,
        tenant: Uuid,
        space: &Space,
        tasks: &[(Uuid, Vec<f32>)],
    ) -> Result<(), StoreError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let schema = schema(space.dimensions);
        let batch = batch(&schema, space, tasks)?;
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .merge(&table_name(tenant, space), &schema, &batch)
                .await
            {
                Ok(()) => return Ok(()),
                Err(err) if tries < WRITE_TRIES && conflict(&err) => {
                    tracing::debug!(%err, tries, "vector write conflicted; trying again");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// One try of [`VectorStore::upsert`]: the table made if missing, then the batch merged
    /// in by task id. A writer making the same table at the same moment fails this try with
    /// a conflict too; the next one finds the table.
    async fn merge(
        &self,
        table: &str,
        schema: &SchemaRef,
        batch: &RecordBatch,
    ) -> Result<(), lancedb::Error> {
        let table = self
            .db
            .create_empty_table(table, schema.clone())
            .mode(CreateTableMode::exist_ok(|request| request))
            .execute()
            .await?;
        let rows = RecordBatchIterator::new([Ok(batch.clone())], schema.clone());
        let mut merge = table.merge_insert(&["task_id"]);
        merge
            .when_matched_update_all(None)
            .when_not_matched_insert_all();
        merge.execute(Box::new(rows)).await?;
        Ok(())
    }

    /// The `limit` tasks nearest to `vector` in the tenant's table for `space`, most alike
    /// first; none when the tenant has no vectors in that space.
    pub async fn nearest(
        &self,
        tenant: Uuid,
        space: &Space,
        vector: &[f32],
        limit: usize,
    ) -> Result<Vec<Neighbour>, StoreError> {
        let table = match self
            .db
            .open_table(table_name(tenant, space))
            .execute()
            .await
        {
            Ok(table) => table,
            Err(lancedb::Error::TableNotFound { .. }) => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        };
        let batches: Vec<RecordBatch> = table
            .query()
            .nearest_to(vector)?
            .distance_type(DistanceType::Cosine)
            .select(Select::columns(&["task_id", "_distance"]))
            .limit(limit)
            .execute()
            .await?
            .try_collect()
            .await?;
        let mut found = Vec::new();
        for batch in &batches {
            let ids = column::<StringArray>(batch, "task_id")?;
            let distances = column::<Float32Array>(batch, "_distance")?;
            for row in 0..batch.num_rows() {
                let task_id = Uuid::parse_str(ids.value(row))
                    .map_err(|err| StoreError(format!("a task id in the store: {err}")))?;
                // lancedb's cosine distance is 1 - cosine similarity.
                found.push(Neighbour {
                    task_id,
                    similarity: 1.0 - distances.value(row),
                });
            }
        }
        found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        Ok(found)
    }

    /// Removes the vectors of `tasks` from every table of the tenant (all embedders).
    pub async fn delete(&self, tenant: Uuid, tasks: &[Uuid]) -> Result<(), StoreError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let ids = tasks
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(", ");
        for name in self.tenant_tables(tenant).await? {
            let table = self.db.open_table(name).execute().await?;
            let mut tries = 0;
            loop {
                tries += 1;
                match table.delete(format!("task_id IN ({ids})").as_str()).await {
                    Ok(_) => break,
                    Err(err) if tries < WRITE_TRIES && conflict(&err) => {
                        tokio::time::sleep(Duration::from_millis(20 * u64::from(tries))).await;
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(())
    }

    /// How many vectors the tenant has in `space` (tests and the bench read it).
    pub async fn count(&self, tenant: Uuid, space: &Space) -> Result<usize, StoreError> {
        match self
            .db
            .open_table(table_name(tenant, space))
            .execute()
            .await
        {
            Ok(table) => Ok(table.count_rows(None).await?),
            Err(lancedb::Error::TableNotFound { .. }) => Ok(0),
            Err(err) => Err(err.into()),
        }
    }

    async fn tenant_tables(&self, tenant: Uuid) -> Result<Vec<String>, StoreError> {
        let prefix = format!("tasks_{}_", tenant.simple());
        Ok(self
            .db
            .table_names()
            .execute()
            .await?
            .into_iter()
            .filter(|name| name.starts_with(&prefix))
            .collect())
    }
}

/// `tasks_{tenant}_{space}`: the space is hashed, since embedder ids hold URLs and table
/// names are paths.
fn table_name(tenant: Uuid, space: &Space) -> String {
    let digest = Sha256::digest(format!("{}/{}", space.embedder, space.dimensions));
    format!("tasks_{}_{}", tenant.simple(), &hex::encode(digest)[..16])
}

fn schema(dimensions: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("task_id", DataType::Utf8, false),
        Field::new("embedder", DataType::Utf8, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                dimensions as i32,
            ),
            false,
        ),
    ]))
}

fn batch(
    schema: &SchemaRef,
    space: &Space,
    tasks: &[(Uuid, Vec<f32>)],
) -> Result<RecordBatch, StoreError> {
    if let Some((id, bad)) = tasks.iter().find(|(_, v)| v.len() != space.dimensions) {
        return Err(StoreError(format!(
            "task {id}: a vector of {} dimensions in a {}-dimension space",
            bad.len(),
            space.dimensions
        )));
    }
    let ids = StringArray::from_iter_values(tasks.iter().map(|(id, _)| id.to_string()));
    let embedders = StringArray::from_iter_values(tasks.iter().map(|_| space.embedder.as_str()));
    let vectors = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
        tasks
            .iter()
            .map(|(_, v)| Some(v.iter().copied().map(Some).collect::<Vec<_>>())),
        space.dimensions as i32,
    );
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(ids), Arc::new(embedders), Arc::new(vectors)],
    )?)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, StoreError> {
    batch
        .column_by_name(name)
        .and_then(|column| column.as_any().downcast_ref::<T>())
        .ok_or_else(|| StoreError(format!("the search answered without `{name}`")))
}

/// Whether a write failed only because another writer committed first.
fn conflict(err: &lancedb::Error) -> bool {
    let text = err.to_string().to_lowercase();
    text.contains("conflict") || text.contains("retryable commit")
}
