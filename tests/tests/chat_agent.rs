//! The chat agent against the fake OpenAI-compatible model, with a host of the test's own
//! for its tools and budget: what the worker's host does over the ledger is tested end to end
//! in `chat.rs`; here, what the agent does when the host's store fails or its budget says no.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use chrono_tz::Tz;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use taskfleet_agents::{
    BudgetRefusal, ChatError, ChatHost, ChatRequest, LlmModel, Reach, TokenBudget, TokenUsage,
    chat_agent,
};
use taskfleet_tests::fake_providers::{FakeProviders, OPENAI_API_KEY};

/// A host whose store answers `store` and whose budget holds `left` tokens.
struct Host {
    store: Result<Value, Value>,
    left: Mutex<i64>,
    held: Mutex<Option<u64>>,
    settled: Mutex<Vec<TokenUsage>>,
    pieces: Mutex<String>,
}

impl Host {
    fn new(store: Result<Value, Value>, left: i64) -> Arc<Host> {
        Arc::new(Host {
            store,
            left: Mutex::new(left),
            held: Mutex::new(None),
            settled: Mutex::new(Vec::new()),
            pieces: Mutex::new(String::new()),
        })
    }
}

impl TokenBudget for Host {
    fn reserve(&self, tokens: u64) -> BoxFuture<'static, Result<(), BudgetRefusal>> {
        let fits = *self.left.lock().unwrap() >= tokens as i64;
        if fits {
            *self.held.lock().unwrap() = Some(tokens);
        }
        Box::pin(async move {
            match fits {
                true => Ok(()),
                false => Err(BudgetRefusal::Exceeded(format!(
                    "{tokens} tokens do not fit"
                ))),
            }
        })
    }

    fn settle(&self, usage: TokenUsage) -> BoxFuture<'static, ()> {
        if self.held.lock().unwrap().take().is_some() || usage != TokenUsage::default() {
            *self.left.lock().unwrap() -= (usage.input + usage.output) as i64;
            self.settled.lock().unwrap().push(usage);
        }
        Box::pin(async {})
    }
}

impl ChatHost for Host {
    fn call_tool(
        &self,
        _name: String,
        _arguments: Value,
    ) -> BoxFuture<'static, Result<Value, Value>> {
        let answer = self.store.clone();
        Box::pin(async move { answer })
    }

    fn reply_delta(&self, text: &str) {
        self.pieces.lock().unwrap().push_str(text);
    }
}

fn request(message: &str) -> ChatRequest {
    ChatRequest {
        message: message.to_owned(),
        history: Vec::new(),
        tasks: Vec::new(),
        now: Utc::now(),
        zone: Tz::UTC,
    }
}

fn model(fake: &FakeProviders) -> LlmModel {
    LlmModel::new(
        &fake.openai_base_url(),
        "gpt-4o-mini",
        OPENAI_API_KEY,
        Duration::from_secs(10),
        Reach::Anywhere,
    )
    .unwrap()
}

#[tokio::test]
async fn a_store_that_fails_stops_the_run_before_the_next_model_call() {
    let fake = FakeProviders::start().await;
    let down = json!({"error": "unavailable", "message": "the task store did not answer"});
    let host = Host::new(Err(down), 1_000_000);

    let error = chat_agent::answer(
        &model(&fake),
        host.clone(),
        request("Add a task to buy milk"),
    )
    .await
    .unwrap_err();

    assert!(
        matches!(&error, ChatError::Store(why) if why.starts_with("add_task failed")),
        "{error:?}"
    );
    assert_eq!(
        fake.chat_requests().len(),
        1,
        "no model call after the outage"
    );
    assert!(
        host.held.lock().unwrap().is_none(),
        "every reservation settled"
    );
}

#[tokio::test]
async fn a_call_the_budget_cannot_hold_is_never_sent() {
    let fake = FakeProviders::start().await;
    let host = Host::new(Ok(json!({})), 100);

    let error = chat_agent::answer(&model(&fake), host.clone(), request("Hello"))
        .await
        .unwrap_err();

    assert!(
        matches!(&error, ChatError::Budget(BudgetRefusal::Exceeded(_))),
        "{error:?}"
    );
    assert!(fake.chat_requests().is_empty());
    assert!(host.settled.lock().unwrap().is_empty(), "nothing spent");
}

#[tokio::test]
async fn each_call_settles_what_the_provider_reported_and_the_reply_streams() {
    let fake = FakeProviders::start().await;
    let host = Host::new(
        Ok(json!({"task": {"id": "t1", "title": "Buy milk"}})),
        1_000_000,
    );

    let reply = chat_agent::answer(
        &model(&fake),
        host.clone(),
        request("Add a task to buy milk"),
    )
    .await
    .unwrap();

    assert_eq!(reply.text, "Added \"Buy milk\" to your tasks.");
    assert_eq!(*host.pieces.lock().unwrap(), reply.text);
    let settled = host.settled.lock().unwrap().clone();
    assert_eq!(
        settled.len(),
        2,
        "the tool call and the answer: {settled:?}"
    );
    let (input, output) = fake.chat_usage();
    let sum = settled
        .iter()
        .fold(TokenUsage::default(), |sum, usage| TokenUsage {
            input: sum.input + usage.input,
            output: sum.output + usage.output,
        });
    assert_eq!(sum, TokenUsage { input, output });
    assert_eq!(reply.usage, sum);
}
