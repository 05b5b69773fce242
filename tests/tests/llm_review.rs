//! The LLM reviewer against the fake OpenAI chat model: the agent reads each horizon's
//! candidates through its tool, the model's top 3 per horizon come back in its own order, and
//! every kind of failure is sorted into the `ReviewError` the prioritiser acts on.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{NaiveDate, TimeZone, Utc};
use futures::future::BoxFuture;
use taskfleet_agents::{
    BudgetRefusal, LlmError, LlmModel, Reach, ReviewCandidate, ReviewError, Reviewer, TokenBudget,
    TokenUsage,
};
use taskfleet_jobs::Horizon;
use taskfleet_tests::{
    fake_providers::{
        ChatMode, FAKE_REVIEW_REASON, FakeProviders, FaultRule, OPENAI_API_KEY, UNKNOWN_TASK_ID,
    },
    free_port,
};
use uuid::Uuid;

const MODEL: &str = "gpt-4o-mini";
const PATH: &str = "/openai/v1/chat/completions";

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn reviewer(fake: &FakeProviders, key: &str) -> Reviewer {
    Reviewer::new(
        LlmModel::new(
            &fake.openai_base_url(),
            MODEL,
            key,
            CALL_TIMEOUT,
            Reach::Anywhere,
        )
        .unwrap(),
    )
}

/// A budget that refuses nothing unless told to, and adds up what each call spent.
#[derive(Default)]
struct Tally {
    refuse: Option<String>,
    reserved: Mutex<Vec<u64>>,
    spent: Mutex<TokenUsage>,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally::default())
    }
    fn spent(&self) -> TokenUsage {
        *self.spent.lock().unwrap()
    }
}

impl TokenBudget for Tally {
    fn reserve(&self, tokens: u64) -> BoxFuture<'static, Result<(), BudgetRefusal>> {
        self.reserved.lock().unwrap().push(tokens);
        let refused = self.refuse.clone().map(BudgetRefusal::Exceeded);
        Box::pin(async move { refused.map_or(Ok(()), Err) })
    }

    fn settle(&self, usage: TokenUsage) -> BoxFuture<'static, ()> {
        let mut spent = self.spent.lock().unwrap();
        spent.input += usage.input;
        spent.output += usage.output;
        Box::pin(async {})
    }
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 2).unwrap()
}

/// Task `n` of `horizon`, ranked `n` by the formula; its id says both.
fn candidate(horizon: Horizon, n: u32) -> ReviewCandidate {
    let horizon_digit = match horizon {
        Horizon::Today => 1,
        Horizon::Week => 2,
        Horizon::Month => 3,
    };
    ReviewCandidate {
        id: id(horizon_digit, n),
        horizon,
        formula_rank: n,
        title: format!("Task {n} of {horizon:?}"),
        snippet: format!("What task {n} is about. ").repeat(20),
        source_kind: "github".to_owned(),
        labels: vec!["bug".to_owned()],
        due_at: (n % 2 == 1).then(|| Utc.with_ymd_and_hms(2026, 12, 3, 16, 0, 0).unwrap()),
        priority: 1.0 / n as f32,
        reason: "due soon".to_owned(),
    }
}

fn id(horizon_digit: u128, n: u32) -> Uuid {
    Uuid::from_u128(horizon_digit << 64 | u128::from(n))
}

/// 5 today, 22 this week (the tool shows 20), 3 this month, given out of order.
fn candidates() -> Vec<ReviewCandidate> {
    let mut all: Vec<ReviewCandidate> = (1..=5)
        .map(|n| candidate(Horizon::Today, n))
        .chain((1..=22).map(|n| candidate(Horizon::Week, n)))
        .chain((1..=3).map(|n| candidate(Horizon::Month, n)))
        .collect();
    all.reverse();
    all
}

fn usage_of(fake: &FakeProviders) -> TokenUsage {
    let (input, output) = fake.chat_usage();
    TokenUsage { input, output }
}

#[tokio::test]
async fn the_model_reads_every_horizon_and_its_top_three_come_back_in_its_order() {
    let fake = FakeProviders::start().await;
    let reviewer = reviewer(&fake, OPENAI_API_KEY);
    assert_eq!(reviewer.model(), MODEL);

    let tally = Tally::new();
    let review = reviewer
        .review(&candidates(), today(), "Europe/Paris", tally.clone())
        .await
        .unwrap();
    // Each call was reserved for before it went, and settled with what the model spent.
    assert_eq!(tally.spent(), usage_of(&fake));
    let reserved = tally.reserved.lock().unwrap().clone();
    assert_eq!(
        reserved.len(),
        2,
        "the tool round and the answer: {reserved:?}"
    );
    assert!(
        reserved.iter().all(|tokens| *tokens > 1_024),
        "{reserved:?}"
    );

    // The fake picks the formula's top 3 of each horizon in reverse order.
    let got: Vec<(Horizon, u32, Uuid)> = review
        .picks
        .iter()
        .map(|pick| (pick.horizon, pick.rank, pick.id))
        .collect();
    let mut expected = Vec::new();
    for (horizon, digit) in [(Horizon::Today, 1), (Horizon::Week, 2), (Horizon::Month, 3)] {
        for (rank, formula_rank) in [(1, 3), (2, 2), (3, 1)] {
            expected.push((horizon, rank, id(digit, formula_rank)));
        }
    }
    assert_eq!(got, expected);
    assert!(
        review
            .picks
            .iter()
            .all(|pick| pick.reason == FAKE_REVIEW_REASON)
    );

    // Three tool calls in the first turn, the answer in the second; usage summed over both.
    assert_eq!(fake.requests(PATH), 2);
    assert_eq!(review.usage, usage_of(&fake));
    assert!(review.usage.input > 0 && review.usage.output > 0);

    let results = fake.chat_tool_results();
    assert!(
        results
            .iter()
            .all(|result| result.tool == "read_candidates")
    );
    let horizons: BTreeSet<&str> = results
        .iter()
        .filter_map(|result| result.arguments["horizon"].as_str())
        .collect();
    assert_eq!(horizons, BTreeSet::from(["month", "today", "week"]));
    let week = results
        .iter()
        .find(|result| result.arguments["horizon"] == "week")
        .unwrap();
    let week: serde_json::Value = serde_json::from_str(&week.content).unwrap();
    let shown = week["candidates"].as_array().unwrap();
    assert_eq!(shown.len(), 20, "the formula's top 20 only");
    assert_eq!(shown[0]["id"], id(2, 1).to_string());
    assert_eq!(shown[0]["due"], "2026-12-03T17:00+01:00");
    assert!(shown[0]["snippet"].as_str().unwrap().chars().count() <= 301);
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_rejected() {
    let fake = FakeProviders::start().await;
    let wrong = reviewer(&fake, "sk-wrong-key-0001");
    assert_eq!(
        wrong
            .review(&candidates(), today(), "UTC", Tally::new())
            .await,
        Err(ReviewError::Llm(LlmError::Rejected))
    );
    let none = reviewer(&fake, "");
    assert_eq!(
        none.review(&candidates(), today(), "UTC", Tally::new())
            .await,
        Err(ReviewError::Llm(LlmError::Rejected))
    );
    let debug = format!("{wrong:?}");
    assert!(!debug.contains("sk-wrong-key-0001"), "{debug}");
    assert_eq!(
        ReviewError::Llm(LlmError::Rejected).to_string(),
        "the LLM provider rejected the API key"
    );
}

#[tokio::test]
async fn a_rate_limit_carries_the_providers_delay() {
    let fake = FakeProviders::start().await;
    fake.fail_next(FaultRule::openai_rate_limited(PATH, 5, 1));
    let reviewer = reviewer(&fake, OPENAI_API_KEY);

    let error = reviewer
        .review(&candidates(), today(), "UTC", Tally::new())
        .await
        .unwrap_err();

    let ReviewError::Llm(LlmError::RateLimited {
        retry_after,
        message,
    }) = &error
    else {
        panic!("not a rate limit: {error:?}");
    };
    assert_eq!(*retry_after, Some(Duration::from_secs(5)));
    assert!(message.contains("Rate limit reached"), "{message}");
    assert!(error.retryable());
    // The rule is used up: the next review goes through.
    assert_eq!(
        reviewer
            .review(&candidates(), today(), "UTC", Tally::new())
            .await
            .unwrap()
            .picks
            .len(),
        9
    );
}

#[tokio::test]
async fn prose_instead_of_json_is_off_schema_with_its_usage() {
    let fake = FakeProviders::start().await;
    fake.set_chat_mode(ChatMode::OffSchema);

    let error = reviewer(&fake, OPENAI_API_KEY)
        .review(&candidates(), today(), "UTC", Tally::new())
        .await
        .unwrap_err();

    let ReviewError::OffSchema { reason, usage } = &error else {
        panic!("not off-schema: {error:?}");
    };
    assert!(reason.starts_with("the answer is not JSON"), "{reason}");
    assert!(reason.contains("Looking at your lists"), "{reason}");
    assert_eq!(*usage, usage_of(&fake));
    assert!(usage.input > 0);
    assert!(!error.retryable());
}

#[tokio::test]
async fn an_id_that_was_not_a_candidate_is_named() {
    let fake = FakeProviders::start().await;
    fake.set_chat_mode(ChatMode::UnknownId);

    let error = reviewer(&fake, OPENAI_API_KEY)
        .review(&candidates(), today(), "UTC", Tally::new())
        .await
        .unwrap_err();

    let ReviewError::OffSchema { reason, usage } = &error else {
        panic!("not off-schema: {error:?}");
    };
    assert_eq!(*reason, format!("unknown id {UNKNOWN_TASK_ID} in today"));
    assert_eq!(*usage, usage_of(&fake));
}

#[tokio::test]
async fn a_model_that_never_answers_runs_out_of_turns() {
    let fake = FakeProviders::start().await;
    fake.set_chat_mode(ChatMode::ToolsForever);

    let error = reviewer(&fake, OPENAI_API_KEY)
        .review(&candidates(), today(), "UTC", Tally::new())
        .await
        .unwrap_err();

    let ReviewError::OffSchema { reason, usage } = &error else {
        panic!("not off-schema: {error:?}");
    };
    assert!(
        reason.contains("no answer within 6 model calls"),
        "{reason}"
    );
    assert_eq!(fake.requests(PATH), 6);
    // Counted by the agent hook, as no final response reports it.
    assert_eq!(*usage, usage_of(&fake));
    assert!(usage.input > 0);
}

#[tokio::test]
async fn a_server_error_a_slow_model_or_no_server_is_unavailable() {
    let fake = FakeProviders::start().await;
    let reviewer = reviewer(&fake, OPENAI_API_KEY);

    fake.fail_next(FaultRule::openai_server_error(PATH, 500, 1));
    let error = reviewer
        .review(&candidates(), today(), "UTC", Tally::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ReviewError::Llm(LlmError::Unavailable(message)) if message.contains("The server had an error")),
        "{error:?}"
    );

    fake.fail_next(FaultRule::slow(PATH, Duration::from_secs(3), 1));
    let impatient = Reviewer::new(
        LlmModel::new(
            &fake.openai_base_url(),
            MODEL,
            OPENAI_API_KEY,
            Duration::from_millis(300),
            Reach::Anywhere,
        )
        .unwrap(),
    );
    let error = impatient
        .review(&candidates(), today(), "UTC", Tally::new())
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ReviewError::Llm(LlmError::Unavailable("no answer within 0.3s".to_owned()))
    );

    let nowhere = Reviewer::new(
        LlmModel::new(
            &format!("http://127.0.0.1:{}/openai/v1", free_port()),
            MODEL,
            OPENAI_API_KEY,
            CALL_TIMEOUT,
            Reach::Anywhere,
        )
        .unwrap(),
    );
    let error = nowhere
        .review(&candidates(), today(), "UTC", Tally::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ReviewError::Llm(LlmError::Unavailable(_))),
        "{error:?}"
    );
    assert!(error.retryable());
}

#[tokio::test]
async fn a_spent_budget_stops_the_review_before_any_call() {
    let fake = FakeProviders::start().await;
    let reviewer = reviewer(&fake, OPENAI_API_KEY);
    let broke = Arc::new(Tally {
        refuse: Some("the tenant's monthly LLM budget of 0 tokens is spent".to_owned()),
        ..Tally::default()
    });
    let error = reviewer
        .review(&candidates(), today(), "UTC", broke.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ReviewError::Budget(BudgetRefusal::Exceeded(_))),
        "{error:?}"
    );
    assert!(!error.retryable());
    assert_eq!(
        usage_of(&fake),
        TokenUsage::default(),
        "no call reached the model"
    );
    assert_eq!(broke.spent(), TokenUsage::default());
}
