//! The task tools: what a chat model (and, over MCP, a desktop agent) may do with a tenant's
//! tasks. This file is their one definition: each tool's name, description and JSON schema as
//! the model is shown them, and the checks that turn the model's arguments into a typed
//! [`TaskToolCall`]. Storage runs the calls; the chat agent and the MCP server only describe
//! and forward them, so the two cannot drift apart.
//!
//! Arguments come from a model, so every mistake is a [`ToolError`] the model reads and can
//! recover from (an unknown id, a missing title, a bad date), never a failed job.

use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::{Horizon, TaskStatus, wire};

/// The longest title a tool accepts, in characters.
pub const MAX_TITLE_CHARS: usize = 500;

/// The longest description a tool accepts, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 5_000;

/// The most tasks `list_tasks` answers.
pub const MAX_LISTED: usize = 50;

/// One of the five tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskTool {
    AddTask,
    ListTasks,
    CompleteTask,
    DeleteTask,
    UpdateTask,
}

impl TaskTool {
    pub const ALL: [TaskTool; 5] = [
        TaskTool::AddTask,
        TaskTool::ListTasks,
        TaskTool::CompleteTask,
        TaskTool::DeleteTask,
        TaskTool::UpdateTask,
    ];

    /// The name the model calls it by.
    pub fn name(self) -> &'static str {
        match self {
            TaskTool::AddTask => "add_task",
            TaskTool::ListTasks => "list_tasks",
            TaskTool::CompleteTask => "complete_task",
            TaskTool::DeleteTask => "delete_task",
            TaskTool::UpdateTask => "update_task",
        }
    }

    pub fn named(name: &str) -> Option<TaskTool> {
        TaskTool::ALL.into_iter().find(|tool| tool.name() == name)
    }

    /// What the tool does and answers, for the model.
    pub fn description(self) -> &'static str {
        match self {
            TaskTool::AddTask => {
                "Add a task to the person's list. Answers {\"task\": {...}} with the new task's id."
            }
            TaskTool::ListTasks => {
                "List the person's tasks, best first (today's focus list, then this week's, then \
                 this month's). Answers {\"tasks\": [...], \"total\": n}; use it to find a task's id."
            }
            TaskTool::CompleteTask => {
                "Mark a task as done. Answers {\"task\": {...}} as it now is."
            }
            TaskTool::DeleteTask => {
                "Delete a task for good. Answers {\"deleted\": {\"id\", \"title\"}}."
            }
            TaskTool::UpdateTask => {
                "Change a task's title, description or due date (null clears the due date). \
                 Answers {\"task\": {...}} as it now is."
            }
        }
    }

    /// The JSON schema of the tool's arguments.
    pub fn parameters(self) -> Value {
        let task_id = json!({"type": "string", "format": "uuid",
                             "description": "The task's id, as list_tasks or add_task gave it."});
        let title = json!({"type": "string", "minLength": 1, "maxLength": MAX_TITLE_CHARS});
        let description = json!({"type": "string", "maxLength": MAX_DESCRIPTION_CHARS});
        let due_at = json!({"type": "string",
                            "description": "An RFC 3339 instant, or a date (YYYY-MM-DD) meaning \
                                            the end of that day in the person's time zone."});
        let (properties, required) = match self {
            TaskTool::AddTask => (
                json!({"title": title, "description": description, "due_at": due_at}),
                json!(["title"]),
            ),
            TaskTool::ListTasks => (
                json!({
                    "status": {"type": "string", "enum": ["open", "done", "all"],
                               "description": "Which tasks; open by default."},
                    "horizon": {"type": "string", "enum": ["today", "week", "month"],
                                "description": "Only the tasks of one focus list."},
                }),
                json!([]),
            ),
            TaskTool::CompleteTask | TaskTool::DeleteTask => {
                (json!({"task_id": task_id}), json!(["task_id"]))
            }
            TaskTool::UpdateTask => {
                let mut clearable = due_at;
                clearable["type"] = json!(["string", "null"]);
                (
                    json!({"task_id": task_id, "title": title, "description": description,
                           "due_at": clearable}),
                    json!(["task_id"]),
                )
            }
        };
        json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }
}

/// Which tasks `list_tasks` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    Only(TaskStatus),
    All,
}

/// A tool call whose arguments passed every check.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskToolCall {
    AddTask {
        title: String,
        description: String,
        due_at: Option<DateTime<Utc>>,
    },
    ListTasks {
        listed: Listed,
        horizon: Option<Horizon>,
    },
    CompleteTask {
        task_id: Uuid,
    },
    DeleteTask {
        task_id: Uuid,
    },
    UpdateTask {
        task_id: Uuid,
        title: Option<String>,
        description: Option<String>,
        /// `Some(None)` clears the due date.
        due_at: Option<Option<DateTime<Utc>>>,
    },
}

/// Why a tool call did nothing, in words the model can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ToolError {
    /// `unknown_tool`, `invalid_argument`, `not_found` or `unavailable`.
    pub code: &'static str,
    pub message: String,
}

impl ToolError {
    /// The code of a store that did not answer: not the model's mistake, so the run stops
    /// and the job tries again later.
    pub const UNAVAILABLE: &str = "unavailable";

    pub fn unavailable() -> ToolError {
        ToolError {
            code: ToolError::UNAVAILABLE,
            message: "the task store did not answer".to_owned(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ToolError {
        ToolError {
            code: "invalid_argument",
            message: message.into(),
        }
    }

    pub fn not_found(task_id: Uuid) -> ToolError {
        ToolError {
            code: "not_found",
            message: format!("there is no task {task_id}; call list_tasks to find the task's id"),
        }
    }

    /// What the model is shown: `{"error", "message"}`.
    pub fn to_json(&self) -> Value {
        json!({"error": self.code, "message": self.message})
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddArgs {
    title: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    due_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    horizon: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdArgs {
    task_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateArgs {
    task_id: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// Absent leaves the date; `null` clears it (hence the double option).
    #[serde(default, deserialize_with = "present")]
    due_at: Option<Option<String>>,
}

fn present<'de, D>(deserializer: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(deserializer).map(Some)
}

impl TaskToolCall {
    /// Checks a call of the tool `name` with the model's `arguments` (a JSON object; models
    /// sometimes send `null` or `""` for a tool without arguments). `zone` is the person's time
    /// zone, for due dates given as a day.
    pub fn parse(name: &str, arguments: Value, zone: Tz) -> Result<TaskToolCall, ToolError> {
        let tool = TaskTool::named(name).ok_or_else(|| ToolError {
            code: "unknown_tool",
            message: format!(
                "there is no tool `{name}`; the tools are {}",
                TaskTool::ALL.map(TaskTool::name).join(", ")
            ),
        })?;
        let arguments = match arguments {
            Value::Null => Value::Object(Map::new()),
            Value::String(text) if text.trim().is_empty() => Value::Object(Map::new()),
            // Some models send the arguments as a JSON string inside the JSON.
            Value::String(text) => serde_json::from_str(&text)
                .map_err(|_| ToolError::invalid("the arguments must be a JSON object"))?,
            other => other,
        };
        match tool {
            TaskTool::AddTask => {
                let args: AddArgs = decode(tool, arguments)?;
                Ok(TaskToolCall::AddTask {
                    title: title(&args.title)?,
                    description: description(args.description.as_deref().unwrap_or(""))?,
                    due_at: args
                        .due_at
                        .as_deref()
                        .map(|due| due_at(due, zone))
                        .transpose()?,
                })
            }
            TaskTool::ListTasks => {
                let args: ListArgs = decode(tool, arguments)?;
                let listed = match args.status.as_deref().map(str::trim) {
                    None | Some("") | Some("open") => Listed::Only(TaskStatus::Open),
                    Some("done") => Listed::Only(TaskStatus::Done),
                    Some("all") => Listed::All,
                    Some(other) => {
                        return Err(ToolError::invalid(format!(
                            "status `{other}` is not one of open, done, all"
                        )));
                    }
                };
                let horizon = match args.horizon.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(name) => Some(wire::parse::<Horizon>(name).ok_or_else(|| {
                        ToolError::invalid(format!(
                            "horizon `{name}` is not one of today, week, month"
                        ))
                    })?),
                };
                Ok(TaskToolCall::ListTasks { listed, horizon })
            }
            TaskTool::CompleteTask => {
                let args: IdArgs = decode(tool, arguments)?;
                Ok(TaskToolCall::CompleteTask {
                    task_id: task_id(&args.task_id)?,
                })
            }
            TaskTool::DeleteTask => {
                let args: IdArgs = decode(tool, arguments)?;
                Ok(TaskToolCall::DeleteTask {
                    task_id: task_id(&args.task_id)?,
                })
            }
            TaskTool::UpdateTask => {
                let args: UpdateArgs = decode(tool, arguments)?;
                let call = TaskToolCall::UpdateTask {
                    task_id: task_id(&args.task_id)?,
                    title: args.title.as_deref().map(title).transpose()?,
                    description: args.description.as_deref().map(description).transpose()?,
                    due_at: match args.due_at {
                        None => None,
                        Some(None) => Some(None),
                        Some(Some(due)) => Some(Some(due_at(&due, zone)?)),
                    },
                };
                if matches!(
                    call,
                    TaskToolCall::UpdateTask {
                        title: None,
                        description: None,
                        due_at: None,
                        ..
                    }
                ) {
                    return Err(ToolError::invalid(
                        "name at least one of title, description, due_at to change",
                    ));
                }
                Ok(call)
            }
        }
    }
}

fn decode<T: for<'de> Deserialize<'de>>(tool: TaskTool, arguments: Value) -> Result<T, ToolError> {
    serde_json::from_value(arguments).map_err(|error| {
        ToolError::invalid(format!(
            "bad arguments for {}: {error}; its schema is {}",
            tool.name(),
            tool.parameters()
        ))
    })
}

fn title(text: &str) -> Result<String, ToolError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ToolError::invalid("the title is empty"));
    }
    if text.chars().count() > MAX_TITLE_CHARS {
        return Err(ToolError::invalid(format!(
            "the title is longer than {MAX_TITLE_CHARS} characters"
        )));
    }
    Ok(text.to_owned())
}

fn description(text: &str) -> Result<String, ToolError> {
    let text = text.trim();
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ToolError::invalid(format!(
            "the description is longer than {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(text.to_owned())
}

fn task_id(text: &str) -> Result<Uuid, ToolError> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        ToolError::invalid(format!(
            "`{text}` is not a task id; ids are UUIDs, as list_tasks gives them"
        ))
    })
}

/// An RFC 3339 instant, or a day: the end of that day in `zone`.
fn due_at(text: &str, zone: Tz) -> Result<DateTime<Utc>, ToolError> {
    let text = text.trim();
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Ok(instant.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        ToolError::invalid(format!(
            "due date `{text}` is neither an RFC 3339 instant nor a YYYY-MM-DD date"
        ))
    })?;
    let end = day.and_time(NaiveTime::from_hms_opt(23, 59, 59).expect("a valid time"));
    // A day's end falls in a DST gap nowhere; `earliest` only settles an ambiguous hour.
    zone.from_local_datetime(&end)
        .earliest()
        .map(|due| due.with_timezone(&Utc))
        .ok_or_else(|| ToolError::invalid(format!("{text} 23:59:59 does not exist in {zone}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, arguments: Value) -> Result<TaskToolCall, ToolError> {
        TaskToolCall::parse(name, arguments, Tz::Europe__Paris)
    }

    #[test]
    fn every_tool_has_an_object_schema_and_a_unique_name() {
        for tool in TaskTool::ALL {
            assert_eq!(TaskTool::named(tool.name()), Some(tool));
            assert_eq!(tool.parameters()["type"], "object");
            assert!(!tool.description().is_empty());
        }
    }

    #[test]
    fn add_task_trims_and_reads_a_day_in_the_persons_zone() {
        let call = parse(
            "add_task",
            json!({"title": "  Buy milk ", "due_at": "2026-12-03"}),
        )
        .unwrap();
        assert_eq!(
            call,
            TaskToolCall::AddTask {
                title: "Buy milk".into(),
                description: String::new(),
                due_at: Some("2026-12-03T22:59:59Z".parse().unwrap()),
            }
        );
    }

    #[test]
    fn arguments_sent_as_a_json_string_or_null_are_read() {
        let call = parse(
            "complete_task",
            json!("{\"task_id\": \"00000000-0000-4000-8000-000000000001\"}"),
        );
        assert!(matches!(call, Ok(TaskToolCall::CompleteTask { .. })));
        let call = parse("list_tasks", Value::Null).unwrap();
        assert_eq!(
            call,
            TaskToolCall::ListTasks {
                listed: Listed::Only(TaskStatus::Open),
                horizon: None
            }
        );
    }

    #[test]
    fn mistakes_are_errors_the_model_can_read() {
        let error = parse("complete_task", json!({"task_id": "milk"})).unwrap_err();
        assert_eq!(error.code, "invalid_argument");
        assert!(error.message.contains("list_tasks"), "{error}");
        let error = parse("add_task", json!({"title": " "})).unwrap_err();
        assert!(error.message.contains("empty"), "{error}");
        let error = parse("add_task", json!({"title": "x", "colour": "red"})).unwrap_err();
        assert!(error.message.contains("colour"), "{error}");
        let error = parse("fly", json!({})).unwrap_err();
        assert_eq!(error.code, "unknown_tool");
        let error = parse("list_tasks", json!({"horizon": "year"})).unwrap_err();
        assert!(error.message.contains("today, week, month"), "{error}");
        let error = parse(
            "update_task",
            json!({"task_id": "00000000-0000-4000-8000-000000000001"}),
        )
        .unwrap_err();
        assert!(error.message.contains("at least one"), "{error}");
    }

    #[test]
    fn update_task_tells_a_cleared_due_date_from_an_absent_one() {
        let id = "00000000-0000-4000-8000-000000000001";
        let cleared = parse("update_task", json!({"task_id": id, "due_at": null})).unwrap();
        assert!(matches!(
            cleared,
            TaskToolCall::UpdateTask {
                due_at: Some(None),
                ..
            }
        ));
        let renamed = parse("update_task", json!({"task_id": id, "title": "Oat milk"})).unwrap();
        assert!(matches!(
            renamed,
            TaskToolCall::UpdateTask {
                due_at: None,
                title: Some(_),
                ..
            }
        ));
    }
}
