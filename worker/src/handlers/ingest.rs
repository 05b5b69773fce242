//! `ingest.connector`: pages through a connector's items from its stored cursor. Each page's
//! tasks, the cursor after it and the `embed.items` job for what changed commit together
//! (`Tasks::commit_page`), so an attempt cut short resumes after its last committed page and
//! a task is embedded once per change. Progress is reported per page.

use serde_json::json;
use taskfleet_connectors::Page;
use taskfleet_jobs::spec::IngestConnector;
use taskfleet_storage::{CommitError, IngestPage};

use super::{
    HandlerResult, JobContext, JobFailure,
    connector_account::{AccountError, ConnectorAccount, note},
};

/// Pages one attempt fetches at most; the next ingest goes on from the stored cursor (a
/// provider that never said "last page" cannot keep a worker forever).
const MAX_PAGES: usize = 1_000;

pub async fn ingest(job: &IngestConnector, ctx: &JobContext) -> HandlerResult {
    let fail = |err: AccountError| async move {
        if let AccountError::Provider { err, grant } = &err {
            note(ctx, job.connector_id, err, *grant).await;
        }
        err.into_failure()
    };
    let mut account = match ConnectorAccount::open(ctx, job.connector_id).await {
        Ok(account) => account,
        Err(err) => return Err(fail(err).await),
    };
    let source_kind = account.provider.name();
    let mut cursor = account.record.cursor.clone();
    let (mut pages, mut fetched, mut changed) = (0usize, 0usize, 0usize);
    let mut embed_jobs = Vec::new();
    let mut swept = false;
    while pages < MAX_PAGES && !swept {
        let page: Page = match account.fetch(cursor.as_ref()).await {
            Ok(page) => page,
            Err(err) => return Err(fail(err).await),
        };
        fetched += page.items.len();
        swept = page.done;
        let committed = ctx
            .services
            .tasks
            .commit_page(IngestPage {
                tenant_id: ctx.tenant_id,
                connector_id: job.connector_id,
                job_id: ctx.job_id,
                epoch: ctx.epoch,
                worker: &ctx.worker,
                request_id: ctx.request_id.clone(),
                source_kind: &source_kind,
                items: page.items,
                gone: page.gone,
                cursor_before: cursor.clone(),
                cursor: page.cursor.clone(),
                sweep_done: page.done,
            })
            .await;
        let committed = match committed {
            Ok(committed) => committed,
            Err(CommitError::CursorMoved) => {
                // Another ingest of this connector is ahead: it carries on; this one stops.
                return Ok(json!({
                    "pages": pages, "fetched": fetched, "changed": changed,
                    "embed_jobs": embed_jobs,
                    "stopped": "another ingest of this connector moved its cursor",
                }));
            }
            Err(CommitError::ConnectorGone) => {
                return Err(JobFailure::permanent("the connector was deleted"));
            }
            Err(err) => {
                return Err(JobFailure::retryable(format!(
                    "could not store the page: {err}"
                )));
            }
        };
        pages += 1;
        changed += committed.changed.len();
        embed_jobs.extend(committed.embed_job);
        cursor = Some(page.cursor);
        ctx.progress(None, &format!("fetched {fetched} items ({pages} pages)"))
            .await;
    }
    Ok(json!({
        "pages": pages,
        "fetched": fetched,
        "changed": changed,
        "embed_jobs": embed_jobs,
        "complete": swept,
    }))
}
