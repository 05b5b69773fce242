//! The fake OpenAI's second scripted chat model: a to-do assistant, played when a request
//! offers the `add_task` tool (the real to-do agent's tools: `add_task`, `list_tasks`,
//! `complete_task`, `delete_task`, `update_task`).
//!
//! It decides each turn from the request's messages alone, as a real model would: the last
//! `user` message (lower-cased) says what is wanted, and the tool results after it say how far
//! this turn has got. Results of earlier turns, sent back as history, are where "it" comes from:
//! the task of the most recent add, update or complete result. Every turn is at most one tool
//! call, so a test can follow the agent's loop call by call.
//!
//! | The user says                          | The assistant                                     |
//! |----------------------------------------|---------------------------------------------------|
//! | "add a task to X"                      | `add_task {title: X}`, then `Added "X" to your tasks.` |
//! | "complete task <uuid> … about WORD"    | `complete_task` on the uuid; on an error `list_tasks {status: "open"}` and `complete_task` on the task whose title holds WORD; then `Marked "T" as complete.` |
//! | "mark it as complete" / "complete it"  | `complete_task` on "it", then `Marked "T" as complete.` |
//! | "delete it"                            | `delete_task` on "it", then `Deleted "T".`        |
//! | "rename it to Y"                       | `update_task {task_id, title: Y}`, then `Renamed it to "Y".` |
//! | "what are my tasks" / "list my tasks"  | `list_tasks {}`, then the open tasks' titles      |
//! | anything with "stall"                  | a reply that starts and never ends                |
//! | anything else                          | [`GREETING`]                                      |
//!
//! A tool error (any result that is not JSON with a `task`, `tasks` or `deleted` key) ends the
//! turn with the error's message, except where the script recovers from it (the uuid case).

use std::collections::HashMap;

use serde_json::{Value, json};
use uuid::Uuid;

use super::openai::content_text;

/// The tool whose presence in a request's `tools` makes the fake chat model this assistant.
pub(super) const ADD_TASK: &str = "add_task";
const LIST_TASKS: &str = "list_tasks";
const COMPLETE_TASK: &str = "complete_task";
const DELETE_TASK: &str = "delete_task";
const UPDATE_TASK: &str = "update_task";

const ADD_PHRASE: &str = "add a task to ";
const RENAME_PHRASE: &str = "rename it to ";

/// The answer to anything the script does not know.
const GREETING: &str = "Hello! I can add, list, complete, update and delete your tasks.";

/// What [`Reply::Stall`] says, of which a client only ever sees the start.
const STALL_TEXT: &str = "Let me think about that for a moment, there is a lot to consider.";

/// The answer when "it" names no task: no earlier result holds one.
const UNCLEAR: &str = "I'm not sure which task you mean: no task has been added, changed or completed in this conversation yet.";

/// The assistant's next turn.
#[derive(Debug, PartialEq)]
pub(super) enum Reply {
    /// One tool call.
    Call {
        tool: &'static str,
        arguments: Value,
    },
    /// The final text of the turn.
    Text(String),
    /// A text whose answer starts and never finishes (the "reply that never ends" case): the
    /// server decides how it hangs.
    Stall(String),
}

/// The next turn of the conversation `messages` (already checked by the fake as OpenAI checks
/// them).
pub(super) fn reply(messages: &[Value]) -> Reply {
    let transcript = Transcript::read(messages);
    // ASCII lower-casing keeps byte offsets, so phrases found in `said` cut `transcript.said`.
    let said = transcript.said.to_ascii_lowercase();
    if let Some(at) = said.find(ADD_PHRASE) {
        return match title(&transcript.said[at + ADD_PHRASE.len()..]) {
            Some(title) => transcript.on_task(ADD_TASK, json!({"title": title}), |task| {
                format!("Added \"{}\" to your tasks.", task.title)
            }),
            None => Reply::Text("What should the task say?".to_owned()),
        };
    }
    if said.contains("complete")
        && let Some(task_id) = named_uuid(&said)
    {
        return transcript.complete_named(&task_id, last_word(&said));
    }
    if said.contains("mark it as complete") || said.contains("complete it") {
        return transcript.on_latest_task(COMPLETE_TASK, json!({}), marked);
    }
    if said.contains("delete it") {
        return transcript.on_latest_task(DELETE_TASK, json!({}), |task| {
            format!("Deleted \"{}\".", task.title)
        });
    }
    if let Some(at) = said.find(RENAME_PHRASE) {
        return match title(&transcript.said[at + RENAME_PHRASE.len()..]) {
            Some(title) => {
                transcript.on_latest_task(UPDATE_TASK, json!({"title": title}), |task| {
                    format!("Renamed it to \"{}\".", task.title)
                })
            }
            None => Reply::Text("What should I rename it to?".to_owned()),
        };
    }
    if said.contains("what are my tasks") || said.contains("list my tasks") {
        return match transcript.this_turn(LIST_TASKS) {
            Some(outcome) => Reply::Text(match outcome.tasks() {
                Ok(tasks) => open_tasks(tasks),
                Err(message) => message,
            }),
            None => call(LIST_TASKS, json!({})),
        };
    }
    if said.contains("stall") {
        return Reply::Stall(STALL_TEXT.to_owned());
    }
    Reply::Text(GREETING.to_owned())
}

fn call(tool: &'static str, arguments: Value) -> Reply {
    Reply::Call { tool, arguments }
}

fn marked(task: &Task) -> String {
    format!("Marked \"{}\" as complete.", task.title)
}

/// "You have 2 open tasks: A, B." (tasks marked done are left out, whatever the list's filter).
fn open_tasks(tasks: &[Task]) -> String {
    let titles: Vec<&str> = tasks
        .iter()
        .filter(|task| task.open)
        .map(|task| task.title.as_str())
        .collect();
    match titles.len() {
        0 => "You have no open tasks.".to_owned(),
        1 => format!("You have 1 open task: {}.", titles[0]),
        n => format!("You have {n} open tasks: {}.", titles.join(", ")),
    }
}

/// A task title as the user phrased it: trimmed, without the sentence's closing `.`, `!` or
/// `?`, its first letter upper-cased ("buy milk." → "Buy milk"); `None` when nothing is left.
fn title(phrase: &str) -> Option<String> {
    let phrase = phrase.trim().trim_end_matches(['.', '!', '?']).trim_end();
    let mut chars = phrase.chars();
    let first = chars.next()?;
    Some(first.to_uppercase().chain(chars).collect())
}

/// The first uuid the (lower-cased) message names, hyphenated.
fn named_uuid(said: &str) -> Option<String> {
    said.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .filter(|word| word.len() == 36)
        .find_map(|word| Uuid::try_parse(word).ok())
        .map(|id| id.to_string())
}

/// The message's last word, lower-cased: what the task it means is about ("…, the one about
/// milk" → "milk").
fn last_word(said: &str) -> String {
    said.split(|c: char| !c.is_alphanumeric())
        .rfind(|word| !word.is_empty())
        .unwrap_or_default()
        .to_lowercase()
}

/// A task as a tool result shows it.
struct Task {
    id: String,
    title: String,
    /// Not `"status": "done"`.
    open: bool,
}

impl Task {
    fn read(task: &Value) -> Option<Task> {
        Some(Task {
            id: task.get("id")?.as_str()?.to_owned(),
            title: task.get("title")?.as_str()?.to_owned(),
            open: task.get("status").and_then(Value::as_str) != Some("done"),
        })
    }
}

/// What a tool result says.
enum Outcome {
    /// `{"task": …}`: add, update and complete.
    Task(Task),
    /// `{"tasks": […], "total"}`: list.
    Tasks(Vec<Task>),
    /// `{"deleted": {"id", "title"}}`: delete.
    Deleted(Task),
    /// Anything else, with the words to tell the user.
    Error(String),
}

impl Outcome {
    fn read(content: &str) -> Outcome {
        let json = serde_json::from_str::<Value>(content).ok();
        let read = |json: &Value| {
            if let Some(task) = json.get("task") {
                return Task::read(task).map(Outcome::Task);
            }
            if let Some(tasks) = json.get("tasks") {
                return tasks
                    .as_array()?
                    .iter()
                    .map(Task::read)
                    .collect::<Option<_>>()
                    .map(Outcome::Tasks);
            }
            json.get("deleted")
                .and_then(Task::read)
                .map(Outcome::Deleted)
        };
        json.as_ref().and_then(read).unwrap_or_else(|| {
            let words = json
                .as_ref()
                .and_then(|json| json.get("message").or_else(|| json.get("error")))
                .and_then(Value::as_str)
                .unwrap_or(content)
                .trim();
            Outcome::Error(if words.is_empty() {
                "The tool failed without saying why.".to_owned()
            } else {
                words.to_owned()
            })
        })
    }

    /// The one task a call answered with, or the words to tell the user.
    fn task(&self) -> Result<&Task, String> {
        match self {
            Outcome::Task(task) | Outcome::Deleted(task) => Ok(task),
            Outcome::Tasks(_) => Err("The tool answered with a list, not the task.".to_owned()),
            Outcome::Error(message) => Err(message.clone()),
        }
    }

    /// The tasks a list call answered with, or the words to tell the user.
    fn tasks(&self) -> Result<&[Task], String> {
        match self {
            Outcome::Tasks(tasks) => Ok(tasks),
            Outcome::Task(_) | Outcome::Deleted(_) => {
                Err("The tool answered with one task, not a list.".to_owned())
            }
            Outcome::Error(message) => Err(message.clone()),
        }
    }
}

/// One tool result: the tool that answered and what it said.
struct Exchange {
    tool: String,
    outcome: Outcome,
}

/// What the assistant reads off a request's messages.
struct Transcript {
    /// The last user message, as written.
    said: String,
    /// Every tool result of the conversation, in order.
    results: Vec<Exchange>,
    /// How many of `results` came before the last user message (earlier turns').
    earlier: usize,
}

impl Transcript {
    fn read(messages: &[Value]) -> Transcript {
        let mut tools: HashMap<&str, &str> = HashMap::new();
        let mut transcript = Transcript {
            said: String::new(),
            results: Vec::new(),
            earlier: 0,
        };
        for message in messages {
            match message.get("role").and_then(Value::as_str) {
                Some("user") => {
                    transcript.said = content_text(message.get("content"));
                    transcript.earlier = transcript.results.len();
                }
                Some("assistant") => {
                    for call in message
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let (Some(id), Some(tool)) = (
                            call.get("id").and_then(Value::as_str),
                            call.pointer("/function/name").and_then(Value::as_str),
                        ) {
                            tools.insert(id, tool);
                        }
                    }
                }
                Some("tool") => {
                    let id = message.get("tool_call_id").and_then(Value::as_str);
                    transcript.results.push(Exchange {
                        tool: id
                            .and_then(|id| tools.get(id))
                            .copied()
                            .unwrap_or_default()
                            .to_owned(),
                        outcome: Outcome::read(&content_text(message.get("content"))),
                    });
                }
                _ => {}
            }
        }
        transcript
    }

    /// The last result of `tool` after the last user message.
    fn this_turn(&self, tool: &str) -> Option<&Outcome> {
        self.results[self.earlier..]
            .iter()
            .rev()
            .find(|result| result.tool == tool)
            .map(|result| &result.outcome)
    }

    /// The id of "it": the task of the most recent add, update or complete result of the whole
    /// conversation.
    fn latest_task_id(&self) -> Option<&str> {
        self.results
            .iter()
            .rev()
            .find_map(|result| match &result.outcome {
                Outcome::Task(task) => Some(task.id.as_str()),
                _ => None,
            })
    }

    /// Calls `tool` with `arguments` until this turn has its result, then says `done` with the
    /// task it answered with, or the error.
    fn on_task(
        &self,
        tool: &'static str,
        arguments: Value,
        done: impl Fn(&Task) -> String,
    ) -> Reply {
        match self.this_turn(tool) {
            Some(outcome) => Reply::Text(outcome.task().map_or_else(|error| error, done)),
            None => call(tool, arguments),
        }
    }

    /// [`Transcript::on_task`] on "it": `arguments` with its `task_id`, or [`UNCLEAR`].
    fn on_latest_task(
        &self,
        tool: &'static str,
        mut arguments: Value,
        done: impl Fn(&Task) -> String,
    ) -> Reply {
        if self.this_turn(tool).is_none() {
            let Some(task_id) = self.latest_task_id() else {
                return Reply::Text(UNCLEAR.to_owned());
            };
            arguments["task_id"] = json!(task_id);
        }
        self.on_task(tool, arguments, done)
    }

    /// "Complete task <uuid>, the one about <word>": completes the uuid; if that fails, lists
    /// the open tasks and completes the one whose title holds `word` (the "wrong id answered
    /// with a tool error, then recovered" scenario).
    fn complete_named(&self, task_id: &str, word: String) -> Reply {
        let complete = |task_id: &str| call(COMPLETE_TASK, json!({"task_id": task_id}));
        let Some(last) = self.results[self.earlier..].last() else {
            return complete(task_id);
        };
        match (last.tool.as_str(), &last.outcome) {
            (COMPLETE_TASK, Outcome::Error(_)) if self.this_turn(LIST_TASKS).is_none() => {
                call(LIST_TASKS, json!({"status": "open"}))
            }
            (COMPLETE_TASK, outcome) => Reply::Text(outcome.task().map_or_else(|e| e, marked)),
            (LIST_TASKS, outcome) => match outcome.tasks() {
                Ok(tasks) => match tasks
                    .iter()
                    .find(|task| task.title.to_lowercase().contains(&word))
                {
                    Some(task) => complete(&task.id),
                    None => Reply::Text(format!(
                        "I could not find that task, and none of your open tasks mentions \"{word}\"."
                    )),
                },
                Err(message) => Reply::Text(message),
            },
            // A result this script never asks for: start over from the uuid.
            _ => complete(task_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILK_ID: &str = "0b6f3c1e-5d6a-4c55-9a51-0c5f8d6a1b01";
    const DOG_ID: &str = "7d1a2b3c-4d5e-4f60-8a71-b2c3d4e5f602";
    const WRONG_ID: &str = "00000000-0000-4000-8000-00000000dead";

    /// A conversation as the agent sends it, built turn by turn.
    struct Chat {
        messages: Vec<Value>,
        calls: usize,
    }

    impl Chat {
        fn new() -> Chat {
            Chat {
                messages: vec![
                    json!({"role": "system", "content": "You manage the user's to-do list."}),
                ],
                calls: 0,
            }
        }

        fn user(&mut self, text: &str) -> Reply {
            self.messages.push(json!({"role": "user", "content": text}));
            reply(&self.messages)
        }

        /// Sends back `reply`'s call (which must be one) with `result` as the tool's answer,
        /// the way the agent does, and returns the next reply.
        fn answer(&mut self, reply: &Reply, result: Value) -> Reply {
            let Reply::Call { tool, arguments } = reply else {
                panic!("not a call: {reply:?}");
            };
            self.calls += 1;
            let id = format!("call_{}", self.calls);
            self.messages.push(json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": id,
                    "type": "function",
                    "function": {"name": tool, "arguments": arguments.to_string()},
                }],
            }));
            // Tool results arrive as strings or as text parts; both must read the same.
            let content = match result {
                Value::String(text) => json!(text),
                result if self.calls.is_multiple_of(2) => {
                    json!([{"type": "text", "text": result.to_string()}])
                }
                result => json!(result.to_string()),
            };
            self.messages
                .push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            super::reply(&self.messages)
        }

        /// Ends the turn with `reply`'s text, as history for the next turn.
        fn said(&mut self, reply: &Reply) {
            let Reply::Text(text) = reply else {
                panic!("not a text: {reply:?}");
            };
            self.messages
                .push(json!({"role": "assistant", "content": text}));
        }
    }

    fn task(id: &str, title: &str, status: &str) -> Value {
        json!({"id": id, "title": title, "description": null, "status": status, "due_at": null,
            "horizon": "today", "rank": 1, "source": "manual", "url": null})
    }

    fn calls(tool: &'static str, arguments: Value) -> Reply {
        Reply::Call { tool, arguments }
    }

    fn text(text: &str) -> Reply {
        Reply::Text(text.to_owned())
    }

    #[test]
    fn titles_are_trimmed_stripped_and_capitalised() {
        assert_eq!(title(" buy milk. ").as_deref(), Some("Buy milk"));
        assert_eq!(title("call mom!?").as_deref(), Some("Call mom"));
        assert_eq!(title("élan vital").as_deref(), Some("Élan vital"));
        assert_eq!(title("Q3 report").as_deref(), Some("Q3 report"));
        assert_eq!(title(" ?! "), None);
        let mut chat = Chat::new();
        assert_eq!(
            chat.user("Please ADD A TASK TO   water the plants!"),
            calls(ADD_TASK, json!({"title": "Water the plants"}))
        );
    }

    #[test]
    fn adds_milk_then_completes_it_from_the_earlier_tool_result() {
        let mut chat = Chat::new();
        let add = chat.user("Add a task to buy milk");
        assert_eq!(add, calls(ADD_TASK, json!({"title": "Buy milk"})));
        let added = chat.answer(&add, json!({"task": task(MILK_ID, "Buy milk", "open")}));
        assert_eq!(added, text("Added \"Buy milk\" to your tasks."));
        chat.said(&added);

        let complete = chat.user("Great, now mark it as complete.");
        assert_eq!(complete, calls(COMPLETE_TASK, json!({"task_id": MILK_ID})));
        let done = chat.answer(
            &complete,
            json!({"task": task(MILK_ID, "Buy milk", "done")}),
        );
        assert_eq!(done, text("Marked \"Buy milk\" as complete."));
    }

    #[test]
    fn a_wrong_id_answered_with_an_error_is_recovered_through_the_list() {
        let mut chat = Chat::new();
        let first = chat.user(&format!(
            "Complete task {}, the one about milk",
            WRONG_ID.to_uppercase()
        ));
        assert_eq!(first, calls(COMPLETE_TASK, json!({"task_id": WRONG_ID})));
        let list = chat.answer(
            &first,
            json!({"error": "not_found", "message": "No task 00000000-0000-4000-8000-00000000dead."}),
        );
        assert_eq!(list, calls(LIST_TASKS, json!({"status": "open"})));
        let tasks = [
            task(DOG_ID, "Walk the dog", "open"),
            task(MILK_ID, "Buy MILK", "open"),
        ];
        let retry = chat.answer(&list, json!({"tasks": tasks, "total": 2}));
        assert_eq!(retry, calls(COMPLETE_TASK, json!({"task_id": MILK_ID})));
        let done = chat.answer(&retry, json!({"task": task(MILK_ID, "Buy MILK", "done")}));
        assert_eq!(done, text("Marked \"Buy MILK\" as complete."));
    }

    #[test]
    fn a_wrong_id_with_no_matching_task_says_so_and_a_second_error_ends_the_turn() {
        let mut chat = Chat::new();
        let first = chat.user(&format!("Complete task {WRONG_ID}, the one about bread"));
        let list = chat.answer(&first, json!("Task not found"));
        let tasks = [task(DOG_ID, "Walk the dog", "open")];
        assert_eq!(
            chat.answer(&list, json!({"tasks": tasks, "total": 1})),
            text("I could not find that task, and none of your open tasks mentions \"bread\".")
        );

        let mut chat = Chat::new();
        let first = chat.user(&format!("complete {WRONG_ID} about dog"));
        let list = chat.answer(&first, json!({"error": "not_found", "message": "gone"}));
        let retry = chat.answer(&list, json!({"tasks": tasks, "total": 1}));
        assert_eq!(retry, calls(COMPLETE_TASK, json!({"task_id": DOG_ID})));
        assert_eq!(
            chat.answer(
                &retry,
                json!({"error": "invalid_argument", "message": "Already done."})
            ),
            text("Already done.")
        );
    }

    #[test]
    fn errors_end_the_turn_with_their_message() {
        let mut chat = Chat::new();
        let add = chat.user("add a task to buy milk");
        assert_eq!(
            chat.answer(
                &add,
                json!({"error": "invalid_argument", "message": "The title is too long."})
            ),
            text("The title is too long.")
        );
        let mut chat = Chat::new();
        let add = chat.user("add a task to buy milk");
        assert_eq!(
            chat.answer(&add, json!("database unavailable")),
            text("database unavailable")
        );
        let mut chat = Chat::new();
        let add = chat.user("add a task to buy milk");
        assert_eq!(
            chat.answer(&add, json!({"error": "internal"})),
            text("internal")
        );
    }

    #[test]
    fn it_is_the_most_recent_task_and_unclear_without_one() {
        let mut chat = Chat::new();
        assert_eq!(chat.user("Complete it"), text(UNCLEAR));
        assert_eq!(chat.user("delete it"), text(UNCLEAR));

        let mut chat = Chat::new();
        let add = chat.user("add a task to walk the dog");
        let added = chat.answer(&add, json!({"task": task(DOG_ID, "Walk the dog", "open")}));
        chat.said(&added);
        let add = chat.user("add a task to buy milk");
        let added = chat.answer(&add, json!({"task": task(MILK_ID, "Buy milk", "open")}));
        chat.said(&added);

        let rename = chat.user("Rename it to buy oat milk.");
        assert_eq!(
            rename,
            calls(
                UPDATE_TASK,
                json!({"task_id": MILK_ID, "title": "Buy oat milk"})
            )
        );
        let renamed = chat.answer(
            &rename,
            json!({"task": task(MILK_ID, "Buy oat milk", "open")}),
        );
        assert_eq!(renamed, text("Renamed it to \"Buy oat milk\"."));
        chat.said(&renamed);

        let delete = chat.user("Now delete it");
        assert_eq!(delete, calls(DELETE_TASK, json!({"task_id": MILK_ID})));
        let deleted = chat.answer(
            &delete,
            json!({"deleted": {"id": MILK_ID, "title": "Buy oat milk"}}),
        );
        assert_eq!(deleted, text("Deleted \"Buy oat milk\"."));
    }

    #[test]
    fn lists_the_open_tasks() {
        let mut chat = Chat::new();
        let list = chat.user("What are my tasks?");
        assert_eq!(list, calls(LIST_TASKS, json!({})));
        let tasks = [
            task(DOG_ID, "Walk the dog", "open"),
            task(WRONG_ID, "File taxes", "done"),
            task(MILK_ID, "Buy milk", "open"),
        ];
        assert_eq!(
            chat.answer(&list, json!({"tasks": tasks, "total": 3})),
            text("You have 2 open tasks: Walk the dog, Buy milk.")
        );
        let mut chat = Chat::new();
        let list = chat.user("list my tasks");
        assert_eq!(
            chat.answer(&list, json!({"tasks": [tasks[0]], "total": 1})),
            text("You have 1 open task: Walk the dog.")
        );
        let mut chat = Chat::new();
        let list = chat.user("list my tasks");
        assert_eq!(
            chat.answer(&list, json!({"tasks": [], "total": 0})),
            text("You have no open tasks.")
        );
    }

    #[test]
    fn stalls_and_greets() {
        let mut chat = Chat::new();
        assert_eq!(
            chat.user("please stall"),
            Reply::Stall(STALL_TEXT.to_owned())
        );
        assert_eq!(chat.user("Hi there"), text(GREETING));
        // Only the last user message counts: an earlier request is not repeated.
        let mut chat = Chat::new();
        let add = chat.user("add a task to buy milk");
        let added = chat.answer(&add, json!({"task": task(MILK_ID, "Buy milk", "open")}));
        chat.said(&added);
        chat.messages
            .push(json!({"role": "user", "content": [{"type": "text", "text": "Thanks!"}]}));
        assert_eq!(reply(&chat.messages), text(GREETING));
    }
}
