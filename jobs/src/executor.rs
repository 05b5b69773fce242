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
    /// Fault injection for tests, refused unless the API and the worker run with
    /// `TASKFLEET_FAULT_INJECTION=true`. `args.mode`: `fail` (fail while the attempt is at
    /// most `args.times`, default every attempt; `args.retry_after_ms` hints the delay;
    /// `args.permanent` forbids retries), `hang`, `slow` (succeed after `args.ms`, reporting
    /// nothing), `panic`, or `exit` (the worker process).
    #[oai(rename = "fault")]
    #[serde(rename = "fault")]
    Fault,
}

impl ExecutorTool {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorTool::Noop => "noop",
            ExecutorTool::Sleep => "sleep",
            ExecutorTool::MarkdownFormat => "markdown.format",
            ExecutorTool::ChangelogGenerate => "changelog.generate",
            ExecutorTool::Fault => "fault",
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
    Fault(Fault),
}

/// What the `fault` tool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Fail {
        /// Fail attempts up to this one; `None` fails every attempt.
        times: Option<u64>,
        retry_after_ms: Option<u64>,
        permanent: bool,
    },
    Hang,
    Slow {
        ms: u64,
    },
    Panic,
    Exit,
}

impl ExecutorRun {
    /// The validated call; `fault_injection` admits the `fault` tool.
    pub fn call(&self, fault_injection: bool) -> Result<ExecutorCall, InvalidJob> {
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
            ExecutorTool::Fault if !fault_injection => Err(InvalidJob::new(
                "tool `fault` is disabled: it needs TASKFLEET_FAULT_INJECTION=true",
            )),
            ExecutorTool::Fault => {
                let number = |name: &str| args.get(name).and_then(Value::as_u64);
                let fault = match optional_string("mode")?.as_deref() {
                    Some("fail") => Fault::Fail {
                        times: number("times"),
                        retry_after_ms: number("retry_after_ms"),
                        permanent: args.get("permanent").and_then(Value::as_bool) == Some(true),
                    },
                    Some("hang") => Fault::Hang,
                    Some("slow") => Fault::Slow {
                        ms: number("ms").unwrap_or(0).min(MAX_SLEEP_MS),
                    },
                    Some("panic") => Fault::Panic,
                    Some("exit") => Fault::Exit,
                    _ => {
                        return Err(InvalidJob::new(
                            "tool `fault` needs `args.mode`: fail, hang, slow, panic or exit",
                        ));
                    }
                };
                Ok(ExecutorCall::Fault(fault))
            }
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
            run(ExecutorTool::Sleep, None, Some(json!({"ms": 5}))).call(false),
            Ok(ExecutorCall::Sleep { ms: 5 })
        );
        for bad in [
            None,
            Some(json!({})),
            Some(json!({"ms": "5"})),
            Some(json!({"ms": -1})),
        ] {
            assert!(run(ExecutorTool::Sleep, None, bad).call(false).is_err());
        }
        let too_long = run(
            ExecutorTool::Sleep,
            None,
            Some(json!({"ms": MAX_SLEEP_MS + 1})),
        );
        assert!(
            too_long
                .call(false)
                .unwrap_err()
                .message
                .contains("most a sleep")
        );
    }

    #[test]
    fn text_tools_need_input_and_string_args() {
        assert!(
            run(ExecutorTool::MarkdownFormat, None, None)
                .call(false)
                .is_err()
        );
        assert!(
            run(
                ExecutorTool::ChangelogGenerate,
                Some("feat: x"),
                Some(json!({"version": 2}))
            )
            .call(false)
            .is_err()
        );
        assert_eq!(
            run(
                ExecutorTool::ChangelogGenerate,
                Some("feat: x"),
                Some(json!({"version": "2.0"}))
            )
            .call(false),
            Ok(ExecutorCall::ChangelogGenerate {
                input: "feat: x".into(),
                version: Some("2.0".into()),
                date: None
            })
        );
        assert!(
            run(ExecutorTool::Noop, None, Some(json!([1])))
                .call(false)
                .is_err()
        );
    }

    #[test]
    fn the_fault_tool_needs_to_be_enabled_and_a_mode() {
        let fail = run(
            ExecutorTool::Fault,
            None,
            Some(json!({"mode": "fail", "times": 2})),
        );
        assert!(fail.call(false).unwrap_err().message.contains("disabled"));
        assert_eq!(
            fail.call(true),
            Ok(ExecutorCall::Fault(Fault::Fail {
                times: Some(2),
                retry_after_ms: None,
                permanent: false
            }))
        );
        assert!(run(ExecutorTool::Fault, None, None).call(true).is_err());
    }
}
