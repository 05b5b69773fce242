//! The LLM reviewer of the formula's focus lists: a rig agent reads the formula's top
//! candidates of each horizon through a tool and answers its own top 3 per horizon, each with a
//! one-line reason.
//!
//! The model is any OpenAI-compatible `/chat/completions` endpoint (OpenAI, Ollama, vLLM),
//! called through rig-core's Chat Completions wire and driven by a rig-agent [`Agent`]
//! (`rig_agent::Agent`): a system prompt, the tool `read_candidates {horizon}`, and enough
//! turns for three tool calls and the answer. The answer must be JSON naming only ids the tool
//! gave for that horizon; [`parse_answer`] checks it. Whatever goes wrong is a
//! [`ReviewError`], and the caller keeps the formula's ranking: the review only ever reorders
//! the formula's own candidates.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rig_agent::{
    AgentBuilder,
    tool::{Tool, ToolContext, ToolExecutionError},
};
use serde::Deserialize;
use serde_json::{Value, json};
use taskfleet_jobs::Horizon;
use uuid::Uuid;

use crate::llm::{
    BudgetHook, BudgetRefusal, LlmError, LlmModel, RunMeter, TokenBudget, TokenUsage, count_tokens,
};

/// How many of the formula's candidates of each horizon the model is shown.
pub const CANDIDATES_PER_HORIZON: usize = 20;

/// The most picks per horizon.
pub const MAX_PICKS: usize = 3;

/// Model calls per review: one per horizon's `read_candidates`, the answer, and slack for a
/// model that reads a horizon twice.
pub const MAX_TURNS: usize = 6;

/// The tool's name, as the model calls it.
pub const TOOL_NAME: &str = "read_candidates";

/// The most tokens of one answer (`max_tokens`): three picks per horizon with a line each
/// fit in a few hundred.
const MAX_ANSWER_TOKENS: u64 = taskfleet_storage::llm_budget::ANSWER_TOKENS as u64;

/// The most characters of a snippet the tool shows.
const SNIPPET_CHARS: usize = 300;

/// The most characters of a pick's reason kept.
const REASON_CHARS: usize = 200;

/// The most characters of an off-schema answer quoted in its error.
const QUOTED_ANSWER_CHARS: usize = 120;

const HORIZONS: [Horizon; 3] = [Horizon::Today, Horizon::Week, Horizon::Month];

const SYSTEM_PROMPT: &str = "\
You review a person's focus lists. Their open tasks (issues, tickets, emails, documents) are \
sorted into three horizons: \"today\" (what to get done today), \"week\" (this week) and \
\"month\" (this month). A formula has already ranked each horizon's candidates from due dates, \
labels, recency and source; the tool read_candidates gives you a horizon's candidates with the \
formula's rank and priority.

Call read_candidates once for each horizon that has candidates. Then pick, for each horizon, \
at most 3 of its candidates, in the order the person should do them: the one to do first comes \
first. Weigh deadlines, what others are waiting on, what blocks other work and what is cheap to \
finish; the formula's rank is a hint, not the answer.

Answer with JSON only, no other text, in exactly this shape:
{\"today\": [{\"id\": \"<id>\", \"reason\": \"<one short line>\"}], \"week\": [...], \"month\": [...]}
Use only ids that read_candidates returned for that same horizon, each id at most once, at \
most 3 per horizon, an empty list for a horizon without candidates. Each reason is one short \
line saying why that task comes at that place.";

/// One of the formula's candidates, as the reviewer is shown it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewCandidate {
    pub id: Uuid,
    pub horizon: Horizon,
    /// Its rank within its horizon by the formula, from 1.
    pub formula_rank: u32,
    pub title: String,
    pub snippet: String,
    /// The connector it came from ("github", "jira", …).
    pub source_kind: String,
    pub labels: Vec<String>,
    pub due_at: Option<DateTime<Utc>>,
    /// The formula's priority, in [0, 1].
    pub priority: f32,
    /// The formula's reason (kept by the caller; the model is not shown it).
    pub reason: String,
}

/// A valid review: the model's picks and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    /// By horizon (today, week, month), then by rank.
    pub picks: Vec<Pick>,
    pub usage: TokenUsage,
}

/// One of the model's top 3 in a horizon.
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    pub id: Uuid,
    pub horizon: Horizon,
    /// 1..=3
    pub rank: u32,
    /// One line.
    pub reason: String,
}

/// Why a review gave nothing usable; the caller keeps the formula's ranking either way.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReviewError {
    /// The model's provider failed, refused or rate limited the run.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The model answered, but not with a valid review (or never finished); `usage` is what
    /// the answers cost.
    #[error("the LLM's answer is not a valid review: {reason}")]
    OffSchema { reason: String, usage: TokenUsage },
    /// The tenant's token budget had no room for a call.
    #[error(transparent)]
    Budget(#[from] BudgetRefusal),
}

impl ReviewError {
    /// Whether a later review may succeed without anyone changing anything.
    pub fn retryable(&self) -> bool {
        matches!(self, ReviewError::Llm(error) if error.retryable())
    }

    /// Whether the provider itself is failing (what a circuit breaker counts).
    pub fn is_outage(&self) -> bool {
        matches!(self, ReviewError::Llm(error) if error.is_outage())
    }

    /// A failed run, as a review sees it: a model that never answered answered off-schema.
    fn from_llm(error: LlmError, usage: TokenUsage) -> ReviewError {
        match error {
            LlmError::NoAnswer(reason) => ReviewError::OffSchema { reason, usage },
            other => ReviewError::Llm(other),
        }
    }
}

/// An OpenAI-compatible chat model that reviews focus lists. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reviewer {
    llm: LlmModel,
}

impl Reviewer {
    pub fn new(llm: LlmModel) -> Reviewer {
        Reviewer { llm }
    }

    /// The model's name, as configured (stored as `ranked_by`).
    pub fn model(&self) -> &str {
        self.llm.model()
    }

    /// Has the model pick its top 3 of each horizon among the formula's top
    /// [`CANDIDATES_PER_HORIZON`] of that horizon (by `formula_rank`; an id given twice counts
    /// once, in its first horizon). `today` and `zone` (an IANA name; UTC when unknown) tell
    /// the model what day it is and set the time zone of the due dates it is shown. No
    /// candidates: no model call, no picks.
    pub async fn review(
        &self,
        candidates: &[ReviewCandidate],
        today: NaiveDate,
        zone: &str,
        budget: Arc<dyn TokenBudget>,
    ) -> Result<Review, ReviewError> {
        let shortlist = Arc::new(Shortlist::new(candidates, zone.parse::<Tz>().ok()));
        if shortlist.known.is_empty() {
            return Ok(Review {
                picks: Vec::new(),
                usage: TokenUsage::default(),
            });
        }
        // One agent per review: the tool holds this review's candidates, and runs share
        // nothing (an agent's bus is driven by whichever of its runs is polling).
        let tool = ReadCandidates {
            shortlist: shortlist.clone(),
        };
        // Sent with every call: the instructions and the tool's definition.
        let fixed_tokens = count_tokens(SYSTEM_PROMPT)
            + count_tokens(TOOL_NAME)
            + count_tokens(&tool.description())
            + count_tokens(&tool.parameters().to_string());
        let hook = BudgetHook::new(budget.clone(), fixed_tokens, MAX_ANSWER_TOKENS);
        let agent = AgentBuilder::new(self.llm.chat())
            .name("taskfleet-reviewer")
            .preamble(SYSTEM_PROMPT)
            .max_tokens(MAX_ANSWER_TOKENS)
            .tool(tool)
            .build();
        let meter = RunMeter::default();
        let run = agent
            .prompt(shortlist.prompt(today, zone))
            .max_turns(MAX_TURNS)
            .add_hook(meter.clone())
            .add_hook(hook.clone())
            .run();
        // Each call has its own timeout; this only bounds a run that somehow outlives them.
        let whole_run = self.llm.call_timeout() * (MAX_TURNS as u32 + 1);
        let finished = tokio::time::timeout(whole_run, run).await;
        // A call that failed (or was cut off) still holds its reservation: let it go.
        budget.settle(TokenUsage::default()).await;
        let response = match finished {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                return Err(match hook.refusal() {
                    Some(refusal) => ReviewError::Budget(refusal),
                    None => ReviewError::from_llm(self.llm.failure(&error, &meter), meter.usage()),
                });
            }
            Err(_) => {
                return Err(ReviewError::Llm(LlmError::Unavailable(format!(
                    "no answer within {}s",
                    whole_run.as_secs()
                ))));
            }
        };
        let usage = TokenUsage::from(response.usage());
        match parse_answer(&response.output(), &shortlist.known) {
            Ok(picks) => Ok(Review { picks, usage }),
            Err(reason) => Err(ReviewError::OffSchema {
                reason: self.llm.scrub(reason),
                usage,
            }),
        }
    }
}

/// The candidates the model is shown, by horizon, as the tool gives them.
struct Shortlist {
    /// The tool's answer for each horizon, in [`HORIZONS`] order.
    answers: [Value; 3],
    counts: [usize; 3],
    /// Every candidate shown, and its horizon.
    known: HashMap<Uuid, Horizon>,
}

impl Shortlist {
    fn new(candidates: &[ReviewCandidate], zone: Option<Tz>) -> Shortlist {
        let mut known = HashMap::new();
        let mut counts = [0; 3];
        let answers = HORIZONS.map(|horizon| {
            let mut list: Vec<&ReviewCandidate> = candidates
                .iter()
                .filter(|candidate| candidate.horizon == horizon)
                .collect();
            list.sort_by_key(|candidate| candidate.formula_rank);
            let mut shown = Vec::new();
            for candidate in list {
                if shown.len() == CANDIDATES_PER_HORIZON {
                    break;
                }
                if known.contains_key(&candidate.id) {
                    continue;
                }
                known.insert(candidate.id, horizon);
                shown.push(candidate_view(candidate, zone));
            }
            counts[index(horizon)] = shown.len();
            json!({"horizon": horizon_name(horizon), "candidates": shown})
        });
        Shortlist {
            answers,
            counts,
            known,
        }
    }

    /// The user message: the day, and how many candidates each horizon has.
    fn prompt(&self, today: NaiveDate, zone: &str) -> String {
        let counts = HORIZONS
            .iter()
            .map(|horizon| {
                format!(
                    "{}: {}",
                    horizon_name(*horizon),
                    self.counts[index(*horizon)]
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "Today is {} in the time zone {}. Candidates per horizon: {counts}. Review the focus \
             lists and answer with the JSON.",
            today.format("%A %Y-%m-%d"),
            if zone.trim().is_empty() {
                "UTC"
            } else {
                zone.trim()
            },
        )
    }
}

/// What the tool shows of one candidate.
fn candidate_view(candidate: &ReviewCandidate, zone: Option<Tz>) -> Value {
    let due = candidate.due_at.map(|due| match zone {
        Some(zone) => due
            .with_timezone(&zone)
            .format("%Y-%m-%dT%H:%M%:z")
            .to_string(),
        None => due.format("%Y-%m-%dT%H:%MZ").to_string(),
    });
    let priority = (f64::from(candidate.priority) * 1000.0).round() / 1000.0;
    json!({
        "id": candidate.id,
        "title": candidate.title.trim(),
        "snippet": cut(candidate.snippet.trim(), SNIPPET_CHARS),
        "source": candidate.source_kind,
        "labels": candidate.labels,
        "due": due,
        "formula_rank": candidate.formula_rank,
        "priority": priority,
    })
}

/// The tool the model reads a horizon's candidates with.
#[derive(Clone)]
struct ReadCandidates {
    shortlist: Arc<Shortlist>,
}

#[derive(Deserialize)]
struct ReadArgs {
    horizon: String,
}

impl Tool for ReadCandidates {
    const NAME: &'static str = TOOL_NAME;
    type Args = ReadArgs;
    type Output = Value;
    type Error = ToolExecutionError;

    fn description(&self) -> String {
        "The formula's candidates of one horizon, best first: id, title, snippet, source, \
         labels, due date (in the person's time zone), the formula's rank and priority (0 to 1)."
            .to_owned()
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "horizon": {
                    "type": "string",
                    "enum": ["today", "week", "month"],
                    "description": "Which focus list to read."
                }
            },
            "required": ["horizon"],
            "additionalProperties": false
        })
    }

    async fn call(
        &self,
        _context: &mut ToolContext,
        args: ReadArgs,
    ) -> Result<Value, ToolExecutionError> {
        let horizon = parse_horizon(&args.horizon).ok_or_else(|| {
            ToolExecutionError::invalid_args(format!(
                "unknown horizon \"{}\": use today, week or month",
                args.horizon
            ))
        })?;
        Ok(self.shortlist.answers[index(horizon)].clone())
    }
}

fn index(horizon: Horizon) -> usize {
    match horizon {
        Horizon::Today => 0,
        Horizon::Week => 1,
        Horizon::Month => 2,
    }
}

fn horizon_name(horizon: Horizon) -> &'static str {
    match horizon {
        Horizon::Today => "today",
        Horizon::Week => "week",
        Horizon::Month => "month",
    }
}

fn parse_horizon(name: &str) -> Option<Horizon> {
    match name.trim().to_ascii_lowercase().as_str() {
        "today" => Some(Horizon::Today),
        "week" => Some(Horizon::Week),
        "month" => Some(Horizon::Month),
        _ => None,
    }
}

/// The first `chars` characters of `text`, with "…" when it was longer.
fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The JSON of an answer: the whole text, or the first fenced block in it (```json … ```).
fn answer_json(text: &str) -> &str {
    let text = text.trim();
    let Some(start) = text.find("```") else {
        return text;
    };
    let block = &text[start + 3..];
    // The fence's info string ("json") runs to the end of its line.
    let block = match block.find('\n') {
        Some(newline) if !block[..newline].contains('{') => &block[newline + 1..],
        _ => block.trim_start_matches(|c: char| c.is_ascii_alphabetic()),
    };
    match block.find("```") {
        Some(end) => block[..end].trim(),
        None => block.trim(),
    }
}

/// Checks the model's answer against the candidates it was shown (`known`: each id's horizon)
/// and returns its picks, by horizon then rank; or says in plain words what is wrong with it.
/// Valid: a JSON object (bare or in a ```json fence) with only the keys today, week and month
/// (a missing one is an empty list), each a list of at most [`MAX_PICKS`] `{id, reason}`, every
/// id a candidate of that horizon and picked once, every reason non-empty; and at least one
/// pick when there were candidates.
pub fn parse_answer(text: &str, known: &HashMap<Uuid, Horizon>) -> Result<Vec<Pick>, String> {
    let json = answer_json(text);
    let value: Value = serde_json::from_str(json).map_err(|_| {
        let quoted = cut(
            &text.split_whitespace().collect::<Vec<_>>().join(" "),
            QUOTED_ANSWER_CHARS,
        );
        if quoted.is_empty() {
            "the answer is empty, not JSON".to_owned()
        } else {
            format!("the answer is not JSON: \"{quoted}\"")
        }
    })?;
    let Value::Object(lists) = value else {
        return Err("the answer is JSON but not an object of today, week and month".to_owned());
    };
    if let Some(unknown) = lists.keys().find(|key| parse_horizon(key).is_none()) {
        return Err(format!(
            "the answer has a list \"{unknown}\", not one of today, week and month"
        ));
    }
    let mut picks = Vec::new();
    let mut seen = HashSet::new();
    for horizon in HORIZONS {
        let name = horizon_name(horizon);
        let Some(list) = lists
            .iter()
            .find(|(key, _)| parse_horizon(key) == Some(horizon))
            .map(|(_, list)| list)
        else {
            continue;
        };
        let entries = match list {
            Value::Array(entries) => entries.as_slice(),
            Value::Null => &[],
            _ => return Err(format!("\"{name}\" is not a list")),
        };
        if entries.len() > MAX_PICKS {
            return Err(format!(
                "{} picks for {name} (at most {MAX_PICKS})",
                entries.len()
            ));
        }
        for (at, entry) in entries.iter().enumerate() {
            let place = format!("pick {} for {name}", at + 1);
            let Some(id) = entry.get("id").and_then(Value::as_str) else {
                return Err(format!("{place} has no id"));
            };
            let Ok(id) = Uuid::parse_str(id.trim()) else {
                return Err(format!("{place} names \"{}\", not a task id", cut(id, 60)));
            };
            match known.get(&id) {
                None => return Err(format!("unknown id {id} in {name}")),
                Some(candidate_of) if *candidate_of != horizon => {
                    return Err(format!(
                        "id {id} is a {} candidate, picked for {name}",
                        horizon_name(*candidate_of)
                    ));
                }
                Some(_) => {}
            }
            if !seen.insert(id) {
                return Err(format!("id {id} picked twice"));
            }
            let reason = entry
                .get("reason")
                .and_then(Value::as_str)
                .map(|reason| reason.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            if reason.is_empty() {
                return Err(format!("{place} ({id}) has no reason"));
            }
            picks.push(Pick {
                id,
                horizon,
                rank: at as u32 + 1,
                reason: cut(&reason, REASON_CHARS),
            });
        }
    }
    if picks.is_empty() && !known.is_empty() {
        return Err("the answer picks nothing".to_owned());
    }
    Ok(picks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Ids 1–5 today, 11–15 this week, 21–22 this month.
    fn known() -> HashMap<Uuid, Horizon> {
        let mut known = HashMap::new();
        for n in 1..=5 {
            known.insert(id(n), Horizon::Today);
        }
        for n in 11..=15 {
            known.insert(id(n), Horizon::Week);
        }
        for n in 21..=22 {
            known.insert(id(n), Horizon::Month);
        }
        known
    }

    fn entry(n: u128) -> Value {
        json!({"id": id(n).to_string(), "reason": format!("because {n}")})
    }

    fn answer(today: &[u128], week: &[u128], month: &[u128]) -> String {
        let list = |ids: &[u128]| ids.iter().map(|n| entry(*n)).collect::<Vec<_>>();
        json!({"today": list(today), "week": list(week), "month": list(month)}).to_string()
    }

    fn error(text: &str) -> String {
        parse_answer(text, &known()).unwrap_err()
    }

    #[test]
    fn a_valid_answer_gives_picks_by_horizon_then_rank() {
        let picks = parse_answer(&answer(&[3, 1, 2], &[15], &[]), &known()).unwrap();
        let got: Vec<(Uuid, Horizon, u32)> = picks
            .iter()
            .map(|pick| (pick.id, pick.horizon, pick.rank))
            .collect();
        assert_eq!(
            got,
            vec![
                (id(3), Horizon::Today, 1),
                (id(1), Horizon::Today, 2),
                (id(2), Horizon::Today, 3),
                (id(15), Horizon::Week, 1),
            ]
        );
        assert_eq!(picks[0].reason, "because 3");
    }

    #[test]
    fn fences_prose_around_them_and_missing_lists_are_tolerated() {
        let fenced = format!("```json\n{}\n```", answer(&[2], &[11], &[21]));
        assert_eq!(parse_answer(&fenced, &known()).unwrap().len(), 3);
        let bare_fence = format!(
            "Here you are:\n```\n{}\n```\nGood luck!",
            answer(&[2], &[], &[])
        );
        assert_eq!(parse_answer(&bare_fence, &known()).unwrap().len(), 1);
        let only_week = json!({"week": [entry(12)]}).to_string();
        let picks = parse_answer(&only_week, &known()).unwrap();
        assert_eq!((picks[0].id, picks[0].horizon), (id(12), Horizon::Week));
        let multi_line = json!({"Today": [{"id": id(1).to_string(), "reason": "due\n  at noon "}]});
        let picks = parse_answer(&multi_line.to_string(), &known()).unwrap();
        assert_eq!(picks[0].reason, "due at noon");
    }

    #[test]
    fn prose_is_not_json() {
        let message = error("I would start with the login bug, then the invoice.");
        assert!(message.starts_with("the answer is not JSON"), "{message}");
        assert!(message.contains("login bug"), "{message}");
        assert_eq!(error("  "), "the answer is empty, not JSON");
        assert!(error("[1, 2]").contains("not an object"));
    }

    #[test]
    fn each_kind_of_wrong_pick_is_named() {
        let stranger = Uuid::from_u128(999);
        let unknown = json!({"today": [{"id": stranger.to_string(), "reason": "x"}]});
        assert_eq!(
            error(&unknown.to_string()),
            format!("unknown id {stranger} in today")
        );
        assert_eq!(
            error(&answer(&[1, 2, 3, 4], &[], &[])),
            "4 picks for today (at most 3)"
        );
        assert_eq!(
            error(&answer(&[1, 2, 1], &[], &[])),
            format!("id {} picked twice", id(1))
        );
        assert_eq!(
            error(&answer(&[11], &[], &[])),
            format!("id {} is a week candidate, picked for today", id(11))
        );
        assert_eq!(
            error(&json!({"today": [], "tomorrow": []}).to_string()),
            "the answer has a list \"tomorrow\", not one of today, week and month"
        );
        assert_eq!(
            error(&json!({"today": {"id": "x"}}).to_string()),
            "\"today\" is not a list"
        );
        assert_eq!(
            error(&json!({"today": [{"reason": "x"}]}).to_string()),
            "pick 1 for today has no id"
        );
        assert_eq!(
            error(&json!({"week": [{"id": "task-7", "reason": "x"}]}).to_string()),
            "pick 1 for week names \"task-7\", not a task id"
        );
        assert_eq!(
            error(&json!({"month": [{"id": id(21).to_string(), "reason": " "}]}).to_string()),
            format!("pick 1 for month ({}) has no reason", id(21))
        );
        assert_eq!(error(&answer(&[], &[], &[])), "the answer picks nothing");
        assert_eq!(parse_answer("{}", &HashMap::new()), Ok(Vec::new()));
    }

    fn candidate(n: u128, horizon: Horizon, formula_rank: u32) -> ReviewCandidate {
        ReviewCandidate {
            id: id(n),
            horizon,
            formula_rank,
            title: format!("Task {n}"),
            snippet: "x".repeat(400),
            source_kind: "github".to_owned(),
            labels: vec!["bug".to_owned()],
            due_at: Some("2026-12-03T16:00:00Z".parse().unwrap()),
            priority: 0.123_456,
            reason: "due tomorrow".to_owned(),
        }
    }

    #[tokio::test]
    async fn the_tool_shows_the_formulas_top_20_of_a_horizon() {
        let mut candidates: Vec<ReviewCandidate> = (1..=25)
            .rev()
            .map(|n| candidate(n, Horizon::Week, n as u32))
            .collect();
        // Also a today candidate, and the same id again in month: it counts once.
        candidates.push(candidate(100, Horizon::Today, 1));
        candidates.push(candidate(100, Horizon::Month, 1));
        let shortlist = Arc::new(Shortlist::new(&candidates, "Europe/Paris".parse().ok()));
        assert_eq!(shortlist.counts, [1, 20, 0]);
        assert_eq!(shortlist.known.len(), 21);
        let tool = ReadCandidates {
            shortlist: shortlist.clone(),
        };
        let read = |horizon: &str| {
            let tool = tool.clone();
            let args = ReadArgs {
                horizon: horizon.to_owned(),
            };
            async move { tool.call(&mut ToolContext::new(), args).await }
        };

        let week = read("week").await.unwrap();
        let shown = week["candidates"].as_array().unwrap();
        assert_eq!(week["horizon"], "week");
        assert_eq!(shown.len(), 20);
        assert_eq!(shown[0]["id"], id(1).to_string());
        assert_eq!(shown[19]["formula_rank"], 20);
        assert_eq!(shown[0]["snippet"].as_str().unwrap().chars().count(), 301);
        assert_eq!(shown[0]["due"], "2026-12-03T17:00+01:00");
        assert_eq!(shown[0]["priority"], 0.123);
        assert_eq!(shown[0]["source"], "github");
        assert_eq!(shown[0]["labels"], json!(["bug"]));
        assert_eq!(read("month").await.unwrap()["candidates"], json!([]));
        let wrong = read("tomorrow").await.unwrap_err();
        assert!(wrong.message().contains("use today, week or month"));

        let prompt = shortlist.prompt(
            NaiveDate::from_ymd_opt(2026, 12, 2).unwrap(),
            "Europe/Paris",
        );
        assert!(
            prompt.contains("Wednesday 2026-12-02 in the time zone Europe/Paris"),
            "{prompt}"
        );
        assert!(prompt.contains("today: 1, week: 20, month: 0"), "{prompt}");
    }

    use std::time::Duration;

    use crate::llm::Reach;

    fn model(base_url: &str, name: &str, key: &str) -> anyhow::Result<LlmModel> {
        LlmModel::new(
            base_url,
            name,
            key,
            Duration::from_secs(60),
            Reach::Anywhere,
        )
    }

    /// A budget that refuses nothing: these tests make no call.
    struct Unlimited;

    impl TokenBudget for Unlimited {
        fn reserve(
            &self,
            _tokens: u64,
        ) -> futures::future::BoxFuture<'static, Result<(), crate::BudgetRefusal>> {
            Box::pin(async { Ok(()) })
        }

        fn settle(&self, _usage: TokenUsage) -> futures::future::BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn no_candidates_no_call() {
        // Nothing listens on port 9: a call would fail.
        let reviewer =
            Reviewer::new(model("http://127.0.0.1:9/v1", "gpt-4o-mini", "sk-x").unwrap());
        let today = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        let review = reviewer
            .review(&[], today, "UTC", Arc::new(Unlimited))
            .await
            .unwrap();
        assert_eq!(review.picks, Vec::new());
        assert_eq!(review.usage, TokenUsage::default());
    }

    #[test]
    fn a_review_can_run_on_any_worker_thread() {
        fn spawnable<T: Send + 'static>(_: &T) {}
        let reviewer = Reviewer::new(model("http://127.0.0.1:9/v1", "m", "").unwrap());
        let review = async move {
            let today = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
            reviewer
                .review(&[], today, "UTC", Arc::new(Unlimited))
                .await
        };
        spawnable(&review);
        spawnable(&Reviewer::new(
            model("http://127.0.0.1:9/v1", "m", "").unwrap(),
        ));
    }

    #[test]
    fn construction_checks_and_debug_hides_the_key() {
        let reviewer = Reviewer::new(
            model(
                " http://localhost:11434/v1/ ",
                " llama3.2 ",
                "sk-secret-key-1\n",
            )
            .unwrap(),
        );
        assert_eq!(reviewer.model(), "llama3.2");
        let debug = format!("{reviewer:?}");
        assert!(debug.contains("http://localhost:11434/v1"), "{debug}");
        assert!(!debug.contains("sk-secret"), "{debug}");
        assert!(model("localhost:11434", "m", "").is_err());
        assert!(model("http://", "m", "").is_err());
        assert!(model("http://x", " ", "").is_err());
        assert!(model("http://x", "m", "a\u{7}b").is_err());
        // A tenant's URL may not name this machine or a private network; the operator's may.
        let tenant = |url: &str| LlmModel::new(url, "m", "", Duration::from_secs(1), Reach::Public);
        assert!(tenant("http://127.0.0.1:11434/v1").is_err());
        assert!(tenant("http://[::1]:8080/v1").is_err());
        assert!(tenant("http://169.254.169.254/latest").is_err());
        assert!(tenant("http://localhost./v1").is_err());
        assert!(tenant("https://api.openai.com/v1").is_ok());
        assert!(model("http://127.0.0.1:11434/v1", "m", "").is_ok());
    }

    #[test]
    fn errors_read_plainly() {
        assert_eq!(
            ReviewError::Llm(LlmError::Rejected).to_string(),
            "the LLM provider rejected the API key"
        );
        let off = ReviewError::OffSchema {
            reason: "4 picks for today (at most 3)".to_owned(),
            usage: TokenUsage {
                input: 10,
                output: 2,
            },
        };
        assert_eq!(
            off.to_string(),
            "the LLM's answer is not a valid review: 4 picks for today (at most 3)"
        );
        assert!(!off.retryable());
        assert!(ReviewError::Llm(LlmError::Unavailable("x".to_owned())).retryable());
    }
}
