//! The `executor.run` job: a built-in tool or an allow-listed command, selected by `tool`. The
//! API validates a call with [`ExecutorRun::call`] before accepting it; the worker runs the same
//! parsed [`ExecutorCall`].

use std::{collections::BTreeMap, sync::Arc};

use poem_openapi::Object;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    executor_commands::{CommandCatalog, CommandTool},
    spec::{InvalidJob, JobOptions},
};

/// Longest `sleep` a job may ask for: an hour. Longer waits are a `run_at`, not a busy worker.
pub const MAX_SLEEP_MS: u64 = 3_600_000;

/// The tools built into the worker; anything else `executor.run` names is a command of the
/// operator's allow list ([`CommandCatalog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinTool {
    /// Does nothing and succeeds: the round-trip probe used by `/readyz` and benchmarks.
    Noop,
    /// Waits `args.ms` milliseconds, reporting progress.
    Sleep,
    /// Normalises the Markdown in `input` to CommonMark.
    MarkdownFormat,
    /// Turns conventional-commit subjects in `input` (one per line, as `git log --oneline`
    /// prints them) into a grouped Markdown changelog; `args.version` and `args.date` title it.
    ChangelogGenerate,
    /// Fault injection for tests, refused unless the API and the worker run with
    /// `TASKFLEET_FAULT_INJECTION=true`. `args.mode`: `fail` (fail while the attempt is at
    /// most `args.times`, default every attempt; `args.retry_after_ms` hints the delay;
    /// `args.permanent` forbids retries), `hang`, `slow` (succeed after `args.ms`, reporting
    /// nothing), `panic`, or `exit` (the worker process).
    Fault,
}

impl BuiltinTool {
    pub const ALL: [BuiltinTool; 5] = [
        BuiltinTool::Noop,
        BuiltinTool::Sleep,
        BuiltinTool::MarkdownFormat,
        BuiltinTool::ChangelogGenerate,
        BuiltinTool::Fault,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BuiltinTool::Noop => "noop",
            BuiltinTool::Sleep => "sleep",
            BuiltinTool::MarkdownFormat => "markdown.format",
            BuiltinTool::ChangelogGenerate => "changelog.generate",
            BuiltinTool::Fault => "fault",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|tool| tool.name() == name)
    }

    /// The built-in tools a job may name: `fault` only with fault injection on.
    pub fn available(fault_injection: bool) -> impl Iterator<Item = BuiltinTool> {
        Self::ALL
            .into_iter()
            .filter(move |tool| fault_injection || *tool != BuiltinTool::Fault)
    }

    /// What `GET /v1/executor/tools` says of each.
    pub fn describe(self) -> &'static str {
        match self {
            BuiltinTool::Noop => "Does nothing and succeeds.",
            BuiltinTool::Sleep => {
                "Waits `args.ms` milliseconds (at most an hour), reporting progress."
            }
            BuiltinTool::MarkdownFormat => "Normalises the Markdown in `input` to CommonMark.",
            BuiltinTool::ChangelogGenerate => {
                "Turns conventional-commit subjects in `input` into a grouped Markdown changelog; \
                 `args.version` and `args.date` title it."
            }
            BuiltinTool::Fault => "Misbehaves as `args.mode` asks (tests only).",
        }
    }
}

/// What decides whether an `executor.run` job can run: the operator's allow list, and whether
/// the `fault` tool is admitted (tests only).
#[derive(Debug, Clone, Default)]
pub struct ExecutorRules {
    pub fault_injection: bool,
    pub commands: Arc<CommandCatalog>,
}

impl ExecutorRules {
    /// The rules of a process started with `TASKFLEET_EXECUTOR_TOOLS` at `tools` (the one
    /// file this crate reads, once, at start); every mistake in the file is named.
    pub fn load(fault_injection: bool, tools: Option<&std::path::Path>) -> Result<Self, String> {
        let commands = match tools {
            None => CommandCatalog::default(),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|err| err.to_string())
                .and_then(|text| CommandCatalog::from_toml(&text))
                .map_err(|err| format!("TASKFLEET_EXECUTOR_TOOLS {}: {err}", path.display()))?,
        };
        Ok(ExecutorRules {
            fault_injection,
            commands: Arc::new(commands),
        })
    }
}

/// `executor.run {tool, input, files, args}`.
#[derive(Debug, Clone, PartialEq, Object, Serialize, Deserialize)]
pub struct ExecutorRun {
    /// A built-in tool (`noop`, `sleep`, `markdown.format`, `changelog.generate`) or a command
    /// of the operator's allow list; `GET /v1/executor/tools` lists them.
    #[oai(validator(min_length = 1, max_length = 100))]
    pub tool: String,
    /// The text a built-in tool works on (`markdown.format`, `changelog.generate`).
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// A command's files, by path relative to its working directory (`src/app.py`), with
    /// their contents. No absolute paths, no `.` or `..` parts.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
    /// A built-in tool's options, an object: `{"ms": 250}` for `sleep`; `{"version": "1.2.0",
    /// "date": "2026-11-22"}` for `changelog.generate`. A command's extra arguments, an array
    /// of strings, each matching one of the tool's patterns: `["--select=E,F"]`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[oai(flatten)]
    #[serde(flatten)]
    pub options: JobOptions,
}

/// A validated executor call: exactly what the worker will run.
#[derive(Debug, Clone, PartialEq)]
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
    Command(CommandCall),
}

/// A run of an allow-listed command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandCall {
    pub tool: Arc<CommandTool>,
    /// The job's extra arguments, after the tool's own.
    pub args: Vec<String>,
    pub files: BTreeMap<String, String>,
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
    /// The validated call.
    pub fn call(&self, rules: &ExecutorRules) -> Result<ExecutorCall, InvalidJob> {
        let Some(tool) = BuiltinTool::parse(&self.tool) else {
            return self.command_call(rules);
        };
        if self.files.is_some() {
            return Err(InvalidJob::new(format!(
                "tool `{}` takes no `files`; commands of the allow list do",
                self.tool
            )));
        }
        let args = match &self.args {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err(InvalidJob::new("`args` must be a JSON object")),
        };
        let input = || {
            self.input
                .clone()
                .ok_or_else(|| InvalidJob::new(format!("tool `{}` needs `input`", self.tool)))
        };
        let optional_string = |name: &str| match args.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(InvalidJob::new(format!("`args.{name}` must be a string"))),
        };
        match tool {
            BuiltinTool::Noop => Ok(ExecutorCall::Noop),
            BuiltinTool::Sleep => {
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
            BuiltinTool::MarkdownFormat => Ok(ExecutorCall::MarkdownFormat { input: input()? }),
            BuiltinTool::ChangelogGenerate => Ok(ExecutorCall::ChangelogGenerate {
                input: input()?,
                version: optional_string("version")?,
                date: optional_string("date")?,
            }),
            BuiltinTool::Fault if !rules.fault_injection => Err(InvalidJob::new(
                "tool `fault` is disabled: it needs TASKFLEET_FAULT_INJECTION=true",
            )),
            BuiltinTool::Fault => {
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

    /// A command of the allow list, checked against what it allows.
    fn command_call(&self, rules: &ExecutorRules) -> Result<ExecutorCall, InvalidJob> {
        let commands = &rules.commands;
        let Some(tool) = commands.get(&self.tool) else {
            let mut known: Vec<&str> = BuiltinTool::available(rules.fault_injection)
                .map(BuiltinTool::name)
                .collect();
            known.extend(commands.names());
            return Err(InvalidJob::new(format!(
                "unknown tool `{}`; the tools are: {} (GET /v1/executor/tools)",
                self.tool,
                known.join(", ")
            )));
        };
        if self.input.is_some() {
            return Err(InvalidJob::new(format!(
                "tool `{}` takes `files`, not `input`",
                self.tool
            )));
        }
        let args = match &self.args {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| InvalidJob::new("`args` of a command must be strings"))?,
            Some(_) => {
                return Err(InvalidJob::new(
                    "`args` of a command must be an array of strings",
                ));
            }
        };
        let files = self.files.clone().unwrap_or_default();
        tool.check(&args, &files)?;
        Ok(ExecutorCall::Command(CommandCall {
            tool: tool.clone(),
            args,
            files,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(tool: &str, input: Option<&str>, args: Option<Value>) -> ExecutorRun {
        ExecutorRun {
            tool: tool.to_owned(),
            input: input.map(str::to_owned),
            files: None,
            args,
            options: JobOptions::default(),
        }
    }

    fn rules(fault_injection: bool) -> ExecutorRules {
        let commands = CommandCatalog::from_toml(
            "[tools.\"ruff.check\"]\nprogram = \"/usr/bin/ruff\"\nallowed_args = ['--select=[A-Z,]+']",
        )
        .unwrap();
        ExecutorRules {
            fault_injection,
            commands: Arc::new(commands),
        }
    }

    #[test]
    fn sleep_needs_a_bounded_whole_number_of_ms() {
        assert_eq!(
            run("sleep", None, Some(json!({"ms": 5}))).call(&rules(false)),
            Ok(ExecutorCall::Sleep { ms: 5 })
        );
        for bad in [
            None,
            Some(json!({})),
            Some(json!({"ms": "5"})),
            Some(json!({"ms": -1})),
        ] {
            assert!(run("sleep", None, bad).call(&rules(false)).is_err());
        }
        let too_long = run("sleep", None, Some(json!({"ms": MAX_SLEEP_MS + 1})));
        assert!(
            too_long
                .call(&rules(false))
                .unwrap_err()
                .message
                .contains("most a sleep")
        );
    }

    #[test]
    fn text_tools_need_input_and_string_args() {
        assert!(
            run("markdown.format", None, None)
                .call(&rules(false))
                .is_err()
        );
        assert!(
            run(
                "changelog.generate",
                Some("feat: x"),
                Some(json!({"version": 2}))
            )
            .call(&rules(false))
            .is_err()
        );
        assert_eq!(
            run(
                "changelog.generate",
                Some("feat: x"),
                Some(json!({"version": "2.0"}))
            )
            .call(&rules(false)),
            Ok(ExecutorCall::ChangelogGenerate {
                input: "feat: x".into(),
                version: Some("2.0".into()),
                date: None
            })
        );
        assert!(
            run("noop", None, Some(json!([1])))
                .call(&rules(false))
                .is_err()
        );
    }

    #[test]
    fn the_fault_tool_needs_to_be_enabled_and_a_mode() {
        let fail = run("fault", None, Some(json!({"mode": "fail", "times": 2})));
        assert!(
            fail.call(&rules(false))
                .unwrap_err()
                .message
                .contains("disabled")
        );
        assert_eq!(
            fail.call(&rules(true)),
            Ok(ExecutorCall::Fault(Fault::Fail {
                times: Some(2),
                retry_after_ms: None,
                permanent: false
            }))
        );
        assert!(run("fault", None, None).call(&rules(true)).is_err());
    }

    #[test]
    fn commands_come_from_the_allow_list_with_files_and_string_args() {
        let mut ruff = run("ruff.check", None, Some(json!(["--select=E,F"])));
        ruff.files = Some(BTreeMap::from([("a.py".into(), "import os\n".into())]));
        match ruff.call(&rules(false)) {
            Ok(ExecutorCall::Command(call)) => {
                assert_eq!(call.tool.name, "ruff.check");
                assert_eq!(call.args, ["--select=E,F"]);
                assert_eq!(call.files.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let unknown = run("rm", None, None)
            .call(&rules(false))
            .unwrap_err()
            .message;
        assert!(
            unknown.contains("unknown tool `rm`") && unknown.contains("ruff.check"),
            "{unknown}"
        );
        ruff.args = Some(json!({"select": "E"}));
        assert!(
            ruff.call(&rules(false))
                .unwrap_err()
                .message
                .contains("array of strings")
        );
        ruff.args = Some(json!([1]));
        assert!(ruff.call(&rules(false)).is_err());
        ruff.args = None;
        ruff.input = Some("x".into());
        assert!(
            ruff.call(&rules(false))
                .unwrap_err()
                .message
                .contains("not `input`")
        );
        let mut sleep = run("sleep", None, Some(json!({"ms": 1})));
        sleep.files = Some(BTreeMap::new());
        assert!(
            sleep
                .call(&rules(false))
                .unwrap_err()
                .message
                .contains("no `files`")
        );
    }
}
