//! The operator's allow list of executor commands (`TASKFLEET_EXECUTOR_TOOLS`, a TOML file):
//! which programs `executor.run` may start, with which arguments, files and limits. The API
//! checks a job against it before accepting it; the worker runs what it allows in the sandbox.
//! An example lives in `deploy/executor-tools.toml`.

use std::{collections::BTreeMap, sync::Arc};

use poem_openapi::Object;
use regex::Regex;
use serde::Deserialize;

use crate::{executor::BuiltinTool, spec::InvalidJob};

/// Longest a path in a job's files may be, and deepest it may nest.
const MAX_PATH_BYTES: usize = 1024;
const MAX_PATH_DEPTH: usize = 32;

/// Every command the operator allows, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandCatalog {
    tools: BTreeMap<String, Arc<CommandTool>>,
}

/// One allow-listed command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandTool {
    pub name: String,
    pub description: String,
    /// Absolute path of the program.
    pub program: String,
    /// Arguments every run starts with, before the job's own.
    pub args: Vec<String>,
    /// Patterns a job's extra argument must match whole (one of them); none: no extra arguments.
    pub allowed_args: Vec<ArgPattern>,
    pub max_args: usize,
    pub limits: CommandLimits,
    /// Variables the tool's environment holds, with fixed values.
    pub env: BTreeMap<String, String>,
    /// Variables copied from the worker's own environment when set there.
    pub pass_env: Vec<String>,
    /// Whether the files the tool writes in its directory come back in the result.
    pub writes_files: bool,
    /// Whether the tool may reach the network (by default it runs in a network namespace of
    /// its own, when the worker can make one).
    pub network: bool,
    /// Exit codes that are the tool's verdict (a check that found problems, say); any other
    /// code is a failed attempt. Empty: every exit code is a verdict.
    pub result_exit_codes: Vec<i32>,
}

/// What one run of a command may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Object)]
#[serde(deny_unknown_fields, default)]
pub struct CommandLimits {
    /// Wall-clock time before the whole process group is killed.
    pub timeout_secs: u64,
    /// CPU time (`RLIMIT_CPU`).
    pub cpu_secs: u64,
    /// Address space of each process (`RLIMIT_AS`), in MiB.
    pub memory_mib: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`), in MiB.
    pub file_size_mib: u64,
    /// Open files per process (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Processes and threads of the run (`RLIMIT_NPROC`, which counts a user's; each run has a
    /// user of its own when the worker is root, and shares the worker's otherwise).
    pub processes: u64,
    /// Bytes kept of stdout and of stderr each; the rest is counted and dropped.
    pub max_output_bytes: u64,
    /// Files a job may send.
    pub max_files: u64,
    /// Bytes of all a job's files together (and of the files that come back).
    pub max_input_bytes: u64,
}

impl Default for CommandLimits {
    fn default() -> Self {
        CommandLimits {
            timeout_secs: 60,
            cpu_secs: 30,
            memory_mib: 1024,
            file_size_mib: 64,
            open_files: 256,
            processes: 128,
            max_output_bytes: 256 * 1024,
            max_files: 200,
            max_input_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A pattern for one extra argument, kept with its source for messages and listings.
#[derive(Debug, Clone)]
pub struct ArgPattern {
    pub source: String,
    regex: Regex,
}

impl PartialEq for ArgPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl ArgPattern {
    fn new(source: &str) -> Result<Self, String> {
        // Anchored, so a pattern admits whole arguments only.
        Regex::new(&format!("^(?:{source})$"))
            .map(|regex| ArgPattern {
                source: source.to_owned(),
                regex,
            })
            .map_err(|err| format!("pattern `{source}` is not a regular expression: {err}"))
    }

    fn matches(&self, arg: &str) -> bool {
        self.regex.is_match(arg)
    }
}

/// The file's shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    tools: BTreeMap<String, ToolFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolFile {
    #[serde(default)]
    description: String,
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    allowed_args: Vec<String>,
    #[serde(default = "default_max_args")]
    max_args: usize,
    #[serde(default)]
    limits: CommandLimits,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    pass_env: Vec<String>,
    #[serde(default)]
    writes_files: bool,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    result_exit_codes: Vec<i32>,
}

fn default_max_args() -> usize {
    16
}

impl CommandCatalog {
    /// Reads the allow list; every mistake in it is named with its tool.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: CatalogFile = toml::from_str(text).map_err(|err| err.to_string())?;
        let mut tools = BTreeMap::new();
        for (name, tool) in file.tools {
            let tool =
                CommandTool::new(&name, tool).map_err(|err| format!("tool `{name}`: {err}"))?;
            tools.insert(name, Arc::new(tool));
        }
        Ok(CommandCatalog { tools })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<CommandTool>> {
        self.tools.get(name)
    }

    pub fn tools(&self) -> impl Iterator<Item = &Arc<CommandTool>> {
        self.tools.values()
    }

    pub fn names(&self) -> Vec<&str> {
        self.tools.keys().map(String::as_str).collect()
    }
}

impl CommandTool {
    fn new(name: &str, file: ToolFile) -> Result<Self, String> {
        let name_ok = !name.is_empty()
            && name.len() <= 100
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !name_ok {
            return Err("a name is lower-case letters, digits, `.`, `_` and `-`".into());
        }
        if BuiltinTool::parse(name).is_some() {
            return Err("the name is a built-in tool's".into());
        }
        if !file.program.starts_with('/') {
            return Err(format!(
                "`program` must be an absolute path, not `{}`",
                file.program
            ));
        }
        let limits = file.limits;
        for (field, value) in [
            ("timeout_secs", limits.timeout_secs),
            ("cpu_secs", limits.cpu_secs),
            ("memory_mib", limits.memory_mib),
            ("file_size_mib", limits.file_size_mib),
            ("open_files", limits.open_files),
            ("processes", limits.processes),
            ("max_output_bytes", limits.max_output_bytes),
            ("max_input_bytes", limits.max_input_bytes),
        ] {
            if value == 0 {
                return Err(format!("`limits.{field}` must be above zero"));
            }
        }
        if limits.timeout_secs > 3600 {
            return Err("`limits.timeout_secs` may be at most 3600".into());
        }
        for name in file.env.keys().chain(&file.pass_env) {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(format!("`{name}` is not an environment variable's name"));
            }
        }
        let allowed_args = file
            .allowed_args
            .iter()
            .map(|source| ArgPattern::new(source))
            .collect::<Result<_, _>>()?;
        Ok(CommandTool {
            name: name.to_owned(),
            description: file.description,
            program: file.program,
            args: file.args,
            allowed_args,
            max_args: file.max_args,
            limits,
            env: file.env,
            pass_env: file.pass_env,
            writes_files: file.writes_files,
            network: file.network,
            result_exit_codes: file.result_exit_codes,
        })
    }

    /// Checks a job's extra arguments and files against what this tool allows.
    pub fn check(
        &self,
        args: &[String],
        files: &BTreeMap<String, String>,
    ) -> Result<(), InvalidJob> {
        let name = &self.name;
        if args.len() > self.max_args {
            return Err(InvalidJob::new(format!(
                "tool `{name}` takes at most {} extra arguments",
                self.max_args
            )));
        }
        for arg in args {
            if !self.allowed_args.iter().any(|pattern| pattern.matches(arg)) {
                let allowed = match self.allowed_args.is_empty() {
                    true => "it takes no extra arguments".to_owned(),
                    false => format!(
                        "each must match one of: {}",
                        self.allowed_args
                            .iter()
                            .map(|p| format!("`{}`", p.source))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                return Err(InvalidJob::new(format!(
                    "argument `{arg}` is not allowed for tool `{name}`: {allowed}"
                )));
            }
        }
        if files.len() as u64 > self.limits.max_files {
            return Err(InvalidJob::new(format!(
                "tool `{name}` takes at most {} files; this job has {}",
                self.limits.max_files,
                files.len()
            )));
        }
        let bytes: u64 = files.values().map(|content| content.len() as u64).sum();
        if bytes > self.limits.max_input_bytes {
            return Err(InvalidJob::new(format!(
                "the files hold {bytes} bytes; tool `{name}` takes at most {}",
                self.limits.max_input_bytes
            )));
        }
        for path in files.keys() {
            check_file_path(path)
                .map_err(|why| InvalidJob::new(format!("file `{path}`: {why}")))?;
        }
        // `a` and `a/b` cannot both be files.
        for path in files.keys() {
            let parents = path.match_indices('/').map(|(at, _)| &path[..at]);
            if let Some(parent) = parents.into_iter().find(|p| files.contains_key(*p)) {
                return Err(InvalidJob::new(format!(
                    "file `{parent}` is also a directory of `{path}`"
                )));
            }
        }
        Ok(())
    }
}

/// A path inside the job's directory: relative, plain names separated by `/`, nothing that
/// climbs out (`..`), no `.` or empty parts, no NUL.
pub fn check_file_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("a path may not be empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return Err("the path is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return Err("the path must be relative to the job's directory");
    }
    if path.contains('\0') {
        return Err("the path holds a NUL byte");
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_PATH_DEPTH {
        return Err("the path nests deeper than 32 directories");
    }
    for part in parts {
        match part {
            "" => return Err("the path has an empty part (`//` or a trailing `/`)"),
            "." | ".." => return Err("the path may not hold `.` or `..` parts"),
            _ if part.len() > 255 => return Err("a part of the path is longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUFF: &str = r#"
        [tools."ruff.check"]
        description = "Lints Python"
        program = "/usr/bin/ruff"
        args = ["check", "--no-cache", "."]
        allowed_args = ['--select=[A-Z0-9,]+', '--line-length=[0-9]{2,3}']
        result_exit_codes = [0, 1]
        limits = { timeout_secs = 10, max_files = 2, max_input_bytes = 10 }
    "#;

    fn files(paths: &[&str]) -> BTreeMap<String, String> {
        paths
            .iter()
            .map(|p| (p.to_string(), "x".to_owned()))
            .collect()
    }

    #[test]
    fn a_catalog_reads_its_tools_and_limits() {
        let catalog = CommandCatalog::from_toml(RUFF).unwrap();
        let ruff = catalog.get("ruff.check").unwrap();
        assert_eq!(ruff.args, ["check", "--no-cache", "."]);
        assert_eq!(ruff.limits.timeout_secs, 10);
        assert_eq!(ruff.limits.cpu_secs, CommandLimits::default().cpu_secs);
        assert!(!ruff.network && !ruff.writes_files);
        assert_eq!(catalog.names(), ["ruff.check"]);
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        for (text, expected) in [
            ("[tools.x]\nprogram = \"ruff\"", "absolute path"),
            ("[tools.noop]\nprogram = \"/bin/true\"", "built-in"),
            ("[tools.X]\nprogram = \"/bin/true\"", "lower-case"),
            (
                "[tools.x]\nprogram = \"/bin/true\"\nallowed_args = ['(']",
                "regular expression",
            ),
            (
                "[tools.x]\nprogram = \"/bin/true\"\nlimits = { timeout_secs = 0 }",
                "above zero",
            ),
            (
                "[tools.x]\nprogram = \"/bin/true\"\ntimeout = 3",
                "unknown field",
            ),
        ] {
            let err = CommandCatalog::from_toml(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn arguments_must_match_a_pattern_whole() {
        let catalog = CommandCatalog::from_toml(RUFF).unwrap();
        let ruff = catalog.get("ruff.check").unwrap();
        let ok = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            ruff.check(&args, &files(&["a.py"]))
        };
        assert!(ok(&["--select=E,F", "--line-length=100"]).is_ok());
        let refused = ok(&["--select=E; rm -rf /"]).unwrap_err().message;
        assert!(refused.contains("--select=[A-Z0-9,]+"), "{refused}");
        assert!(ok(&["--config=/etc/passwd"]).is_err());
        let bare = CommandCatalog::from_toml("[tools.t]\nprogram = \"/bin/true\"").unwrap();
        let message = bare
            .get("t")
            .unwrap()
            .check(&["-v".into()], &BTreeMap::new())
            .unwrap_err()
            .message;
        assert!(message.contains("no extra arguments"), "{message}");
    }

    #[test]
    fn files_are_counted_sized_and_kept_inside_the_directory() {
        let catalog = CommandCatalog::from_toml(RUFF).unwrap();
        let ruff = catalog.get("ruff.check").unwrap();
        assert!(ruff.check(&[], &files(&["src/a.py", "b.py"])).is_ok());
        assert!(
            ruff.check(&[], &files(&["a", "b", "c"]))
                .unwrap_err()
                .message
                .contains("at most 2 files")
        );
        let big = BTreeMap::from([("a".to_owned(), "x".repeat(11))]);
        assert!(
            ruff.check(&[], &big)
                .unwrap_err()
                .message
                .contains("11 bytes")
        );
        for bad in ["../x", "/etc/passwd", "a/../../x", "a//b", "./a", "a/", ""] {
            assert!(ruff.check(&[], &files(&[bad])).is_err(), "{bad}");
        }
        let both = ruff.check(&[], &files(&["a", "a/b"]));
        assert!(both.unwrap_err().message.contains("directory"));
    }
}
