//! `executor.run`: the built-in tools, and allow-listed commands through [`command`].

use std::time::Duration;

use comrak::{Arena, Options, format_commonmark, parse_document};
use serde_json::json;
use taskfleet_jobs::{
    ExecutorRun,
    executor::{ExecutorCall, Fault},
};

use super::{HandlerResult, JobContext, JobFailure, changelog, command};

pub async fn run(job: &ExecutorRun, ctx: &JobContext) -> HandlerResult {
    let call = job
        .call(&ctx.executor_rules)
        .map_err(|invalid| JobFailure::permanent(invalid.message))?;
    Ok(match call {
        ExecutorCall::Noop => json!({}),
        ExecutorCall::Sleep { ms } => {
            // Four equal naps, reporting after each of the first three.
            for quarter in 1..=4u64 {
                tokio::time::sleep(Duration::from_millis(
                    ms * quarter / 4 - ms * (quarter - 1) / 4,
                ))
                .await;
                if quarter < 4 {
                    let message = format!("slept {} of {ms} ms", ms * quarter / 4);
                    ctx.progress(quarter as f32 * 25.0, &message).await;
                }
            }
            json!({ "slept_ms": ms })
        }
        ExecutorCall::MarkdownFormat { input } => {
            json!({ "markdown": format_markdown_reporting(input, ctx).await? })
        }
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
        ExecutorCall::Command(call) => return command::run(call, ctx).await,
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
        Fault::Slow { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({ "slept_ms": ms }))
        }
        Fault::Panic => panic!("injected panic on attempt {}", ctx.attempt),
        Fault::Exit => {
            tracing::warn!(job_id = %ctx.job_id, "injected fault: exiting the worker process");
            std::process::exit(70)
        }
    }
}

fn markdown_options() -> Options<'static> {
    let mut options = Options::default();
    options.extension.table = true;
    options.extension.strikethrough = true;
    options.extension.tasklist = true;
    options.extension.autolink = true;
    options
}

/// Normalises Markdown by parsing it as CommonMark (with GitHub tables, strikethrough and
/// task lists) and printing it back in canonical form. `parsed` hears the number of top-level
/// blocks once parsing is done.
pub fn format_markdown(input: &str, parsed: impl FnOnce(usize)) -> Result<String, std::fmt::Error> {
    let options = markdown_options();
    let arena = Arena::new();
    let root = parse_document(&arena, input, &options);
    parsed(root.children().count());
    let mut out = String::with_capacity(input.len());
    format_commonmark(root, &options, &mut out)?;
    Ok(out)
}

/// [`format_markdown`] on a blocking thread (large documents are CPU work), reporting
/// progress once the document is parsed.
async fn format_markdown_reporting(input: String, ctx: &JobContext) -> Result<String, JobFailure> {
    let (parsed_tx, parsed_rx) = tokio::sync::oneshot::channel();
    let work = tokio::task::spawn_blocking(move || {
        format_markdown(&input, |blocks| {
            let _ = parsed_tx.send(blocks);
        })
    });
    if let Ok(blocks) = parsed_rx.await {
        ctx.progress(50.0, &format!("parsed {blocks} blocks; formatting"))
            .await;
    }
    match work.await {
        Ok(Ok(markdown)) => Ok(markdown),
        Ok(Err(err)) => Err(JobFailure::permanent(format!(
            "could not print the document: {err}"
        ))),
        Err(err) => Err(JobFailure::retryable(format!(
            "formatter thread failed: {err}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_normalised() {
        let mut blocks = 0;
        let out = format_markdown("Title\n=====\n\n* a\n* b\n\nsome   *emph*  text\n", |n| {
            blocks = n
        })
        .unwrap();
        assert_eq!(blocks, 3);
        assert_eq!(out, "# Title\n\n- a\n- b\n\nsome   *emph*  text\n");
    }
}
