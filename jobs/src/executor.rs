//! The `executor.run` job: safe executors selected by `tool`. The API validates a call with
//! [`ExecutorRun::call`] before accepting it; the worker runs the same parsed [`ExecutorCall`].

use poem_openapi::{Enum, Object};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{InvalidJob, JobOptions};

/// Longest `sleep` a job may ask for: an hour. Longer waits are a `run_at`, not a busy worker.
pub const MAX_SLEEP_MS: u64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
pub enum ExecutorTool {
    /// Does nothing and succeeds: the round-trip probe used by `/readyz` and benchmarks.
    #[oai(rename = "noop")]
    #[serde(rename = "noop")]
    Noop,
    /// Waits `args.ms` milliseconds, reporting progress.
    #[oai(rename = "sleep")]
    #[serde(rename = "sleep")]
    Sleep,
    /// Normalises the Markdown in `input` to CommonMark.
    #[oai(rename = "markdown.format")]
    #[serde(rename = "markdown.format")]
    MarkdownFormat,
    /// Turns conventional-commit subjects in `input` (one per line, as `git log --oneline`
    /// prints them) into a grouped Markdown changelog; `args.version` and `args.date` title it.
    #[oai(rename = "changelog.generate")]
    #[serde(rename = "changelog.generate")]
    ChangelogGenerate,
}

impl ExecutorTool {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorTool::Noop => "noop",
            ExecutorTool::Sleep => "sleep",
            ExecutorTool::MarkdownFormat => "markdown.format",
            ExecutorTool::ChangelogGenerate => "changelog.generate",
        }
    }
}

/// `executor.run {tool, input, args}`.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct ExecutorRun {
    pub tool: ExecutorTool,
    /// The text the tool works on (`markdown.format`, `changelog.generate`).
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Tool options: `{"ms": 250}` for `sleep`; `{"version": "1.2.0", "date": "2026-11-22"}`
    /// for `changelog.generate`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[oai(flatten)]
    #[serde(flatten)]
    pub options: JobOptions,
}

/// A validated executor call: exactly what the worker will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorCall {
    Noop,
    Sleep {
        ms: u64,
    },
    MarkdownFormat {
        input: String,
    },
    ChangelogGenerate {
        input: String,
        version: Option<String>,
        date: Option<String>,
    },
}

impl ExecutorRun {
    pub fn call(&self) -> Result<ExecutorCall, InvalidJob> {
        let args = match &self.args {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err(InvalidJob::new("`args` must be a JSON object")),
        };
        let input = || {
            self.input.clone().ok_or_else(|| {
                InvalidJob::new(format!("tool `{}` needs `input`", self.tool.as_str()))
            })
        };
        let optional_string = |name: &str| match args.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(InvalidJob::new(format!("`args.{name}` must be a string"))),
        };
        match self.tool {
            ExecutorTool::Noop => Ok(ExecutorCall::Noop),
            ExecutorTool::Sleep => {
                let ms = args.get("ms").and_then(Value::as_u64).ok_or_else(|| {
                    InvalidJob::new("tool `sleep` needs `args.ms`, a whole number of milliseconds")
                })?;
                if ms > MAX_SLEEP_MS {
                    return Err(InvalidJob::new(format!(
                        "`args.ms` is {ms}; the most a sleep may take is {MAX_SLEEP_MS} ms"
                    )));
                }
                Ok(ExecutorCall::Sleep { ms })
            }
            ExecutorTool::MarkdownFormat => Ok(ExecutorCall::MarkdownFormat { input: input()? }),
            ExecutorTool::ChangelogGenerate => Ok(ExecutorCall::ChangelogGenerate {
                input: input()?,
                version: optional_string("version")?,
                date: optional_string("date")?,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(tool: ExecutorTool, input: Option<&str>, args: Option<Value>) -> ExecutorRun {
        ExecutorRun {
            tool,
            input: input.map(str::to_owned),
            args,
            options: JobOptions::default(),
        }
    }

    #[test]
    fn sleep_needs_a_bounded_whole_number_of_ms() {
        assert_eq!(
            run(ExecutorTool::Sleep, None, Some(json!({"ms": 5}))).call(),
            Ok(ExecutorCall::Sleep { ms: 5 })
        );
        for bad in [
            None,
            Some(json!({})),
            Some(json!({"ms": "5"})),
            Some(json!({"ms": -1})),
        ] {
            assert!(run(ExecutorTool::Sleep, None, bad).call().is_err());
        }
        let too_long = run(
            ExecutorTool::Sleep,
            None,
            Some(json!({"ms": MAX_SLEEP_MS + 1})),
        );
        assert!(
            too_long
                .call()
                .unwrap_err()
                .message
                .contains("most a sleep")
        );
    }

    #[test]
    fn text_tools_need_input_and_string_args() {
        assert!(
            run(ExecutorTool::MarkdownFormat, None, None)
                .call()
                .is_err()
        );
        assert!(
            run(
                ExecutorTool::ChangelogGenerate,
                Some("feat: x"),
                Some(json!({"version": 2}))
            )
            .call()
            .is_err()
        );
        assert_eq!(
            run(
                ExecutorTool::ChangelogGenerate,
                Some("feat: x"),
                Some(json!({"version": "2.0"}))
            )
            .call(),
            Ok(ExecutorCall::ChangelogGenerate {
                input: "feat: x".into(),
                version: Some("2.0".into()),
                date: None
            })
        );
        assert!(
            run(ExecutorTool::Noop, None, Some(json!([1])))
                .call()
                .is_err()
        );
    }
}
