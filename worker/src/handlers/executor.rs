//! `executor.run`: the safe executors.

use std::time::Duration;

use comrak::{Options, markdown_to_commonmark};
use serde_json::json;
use taskfleet_jobs::{
    ExecutorRun,
    executor::{ExecutorCall, Fault},
};

use super::{HandlerResult, JobContext, JobFailure, changelog};

pub async fn run(job: &ExecutorRun, ctx: &JobContext) -> HandlerResult {
    let call = job
        .call(ctx.fault_injection)
        .map_err(|invalid| JobFailure::permanent(invalid.message))?;
    Ok(match call {
        ExecutorCall::Noop => json!({}),
        ExecutorCall::Sleep { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json!({ "slept_ms": ms })
        }
        ExecutorCall::MarkdownFormat { input } => json!({ "markdown": format_markdown(&input) }),
        ExecutorCall::ChangelogGenerate {
            input,
            version,
            date,
        } => {
            let log = changelog::Changelog::parse(&input);
            json!({
                "markdown": log.render(version.as_deref(), date.as_deref()),
                "commits": log.commit_count(),
                "breaking": log.breaking_count(),
            })
        }
        ExecutorCall::Fault(fault) => return inject(fault, ctx).await,
    })
}

/// The `fault` tool: misbehaves as asked, for tests of the failure paths.
async fn inject(fault: Fault, ctx: &JobContext) -> HandlerResult {
    match fault {
        Fault::Fail {
            times,
            retry_after_ms,
            permanent,
        } => {
            if times.is_some_and(|times| u64::from(ctx.attempt) > times) {
                return Ok(json!({ "failed_attempts": ctx.attempt - 1 }));
            }
            Err(JobFailure {
                message: format!("injected failure on attempt {}", ctx.attempt),
                permanent,
                retry_after: retry_after_ms.map(Duration::from_millis),
            })
        }
        Fault::Hang => std::future::pending().await,
        Fault::Panic => panic!("injected panic on attempt {}", ctx.attempt),
        Fault::Exit => {
            tracing::warn!(job_id = %ctx.job_id, "injected fault: exiting the worker process");
            std::process::exit(70)
        }
    }
}

/// Normalises Markdown by parsing it as CommonMark (with GitHub tables, strikethrough and
/// task lists) and printing it back in canonical form.
pub fn format_markdown(input: &str) -> String {
    let mut options = Options::default();
    options.extension.table = true;
    options.extension.strikethrough = true;
    options.extension.tasklist = true;
    options.extension.autolink = true;
    markdown_to_commonmark(input, &options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_normalised() {
        let out = format_markdown("Title\n=====\n\n* a\n* b\n\nsome   *emph*  text\n");
        assert_eq!(out, "# Title\n\n- a\n- b\n\nsome   *emph*  text\n");
    }
}
