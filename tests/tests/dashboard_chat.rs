//! The dashboard's Chat tab in a real browser (headless Chromium through ChromeDriver), with
//! the fake OpenAI-compatible model playing the to-do assistant: a task added and completed in
//! one conversation, each reply with its tool calls inline; the conversation listed and shown
//! again after a reload; the task done on the Tasks tab; a reply shown while it is written;
//! a conversation deleted; and, with no LLM at all, the 422 told in plain words.

use std::time::Duration;

use serde_json::Value;
use taskfleet_tests::{browser::Browser, connector_fleet::ConnectorFleet};

const WAIT: Duration = Duration::from_secs(60);

/// The selector of the `n`th (1-based) message of the open conversation.
fn message(n: usize) -> String {
    format!("#chat-messages li.msg:nth-child({n})")
}

/// Types `text` into the chat box and presses Send.
async fn send(browser: &Browser, text: &str) {
    browser.type_into("#chat-input", text).await;
    browser.click("#chat-send").await;
}

/// How many elements `css` selects.
async fn count(browser: &Browser, css: &str) -> u64 {
    let script = format!(
        "return document.querySelectorAll('{}').length",
        css.replace('\'', "\\'")
    );
    browser.eval(&script).await.as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chat_tab_adds_and_completes_a_task_with_the_assistant() {
    let fleet = ConnectorFleet::start_with_llm(
        &["--queues", "agent"],
        &[("TASKFLEET_LLM_MONTHLY_TOKENS", "1000000")],
    )
    .await;
    let (api, key) = (&fleet.api, fleet.key.as_str());
    let browser = Browser::start().await;
    browser.sign_in(&api.base, key).await;
    browser.wait_text("#whoami", "acme · tenant", WAIT).await;
    browser.click("button[data-tab=\"chat\"]").await;
    browser.wait_text("#chat-title", "New chat", WAIT).await;
    browser
        .wait_text_containing("#conversations", &["No conversations yet"], WAIT)
        .await;
    browser
        .wait_text_containing("#chat-usage", &["LLM tokens this month", "used of"], WAIT)
        .await;

    // The first message starts a conversation: it shows at once, then the reply with the
    // add_task call it made.
    send(&browser, "Add a task to buy milk").await;
    browser
        .wait_text(
            &format!("{} .bubble", message(1)),
            "Add a task to buy milk",
            WAIT,
        )
        .await;
    let reply = format!("{}[data-state=\"done\"]", message(2));
    browser
        .wait_text(
            &format!("{reply} .bubble"),
            "Added \"Buy milk\" to your tasks.",
            WAIT,
        )
        .await;
    let call = browser
        .wait_text_containing(
            &format!("{reply} .tool-call[data-tool=\"add_task\"]"),
            &["add_task", "Buy milk", "(open)"],
            WAIT,
        )
        .await;
    println!("the first tool call: {call}");
    browser
        .wait_text("#chat-title", "Add a task to buy milk", WAIT)
        .await;
    // Listed once its turn is stored, and shown as the open one.
    browser
        .wait_text_containing(
            "#conversations li.selected",
            &["Add a task to buy milk", "2 messages"],
            WAIT,
        )
        .await;

    // The second message continues the same conversation.
    send(&browser, "Mark it as complete").await;
    let reply = format!("{}[data-state=\"done\"]", message(4));
    browser
        .wait_text(
            &format!("{reply} .bubble"),
            "Marked \"Buy milk\" as complete.",
            WAIT,
        )
        .await;
    browser
        .wait_text_containing(
            &format!("{reply} .tool-call[data-tool=\"complete_task\"]"),
            &["complete_task", "Buy milk", "(done)"],
            WAIT,
        )
        .await;
    browser
        .wait_text_containing("#conversations li.selected", &["4 messages"], WAIT)
        .await;
    let (status, page) = api.get(key, "/v1/conversations").await;
    assert_eq!(status, 200, "{page}");
    let conversations = page["conversations"].as_array().unwrap();
    assert_eq!(conversations.len(), 1, "{page:#}");
    assert_eq!(conversations[0]["message_count"], 4, "{page:#}");
    let conversation = conversations[0]["id"].as_str().unwrap().to_owned();

    // After a reload: one conversation listed with its 4 messages; opened, it shows them with
    // the stored tool calls.
    browser.eval("location.reload()").await;
    let item = format!("#conversations li[data-conversation-id=\"{conversation}\"]");
    browser
        .wait_text_containing(&item, &["Add a task to buy milk", "4 messages"], WAIT)
        .await;
    assert_eq!(
        count(&browser, "#conversations li[data-conversation-id]").await,
        1
    );
    browser.wait_text("#chat-title", "New chat", WAIT).await;
    browser.click(&format!("{item} .conversation-open")).await;
    browser
        .wait_text(
            &format!("{} .bubble", message(4)),
            "Marked \"Buy milk\" as complete.",
            WAIT,
        )
        .await;
    assert_eq!(count(&browser, "#chat-messages li.msg").await, 4);
    assert_eq!(count(&browser, "#chat-messages li.msg.user").await, 2);
    browser
        .wait_text_containing(
            &format!("{} .tool-call[data-tool=\"add_task\"]", message(2)),
            &["Buy milk"],
            WAIT,
        )
        .await;
    browser
        .wait_text_containing(
            &format!("{} .tool-call[data-tool=\"complete_task\"]", message(4)),
            &["Buy milk"],
            WAIT,
        )
        .await;
    browser
        .wait_text_containing(&format!("{} .meta", message(4)), &["tokens"], WAIT)
        .await;
    browser.screenshot("dashboard-chat").await;

    // The Tasks tab has it among the work done; so has the API.
    browser.click("button[data-tab=\"tasks\"]").await;
    browser
        .wait_text_containing(
            ".task-column[data-horizon=\"past7d\"] ol",
            &["Buy milk"],
            WAIT,
        )
        .await;
    let (status, done) = api.get(key, "/v1/tasks?status=done").await;
    assert_eq!(status, 200, "{done}");
    assert!(
        done["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|task| task["title"] == "Buy milk"),
        "{done:#}"
    );

    // Deleted with its button, it leaves the list and the API.
    browser.click("button[data-tab=\"chat\"]").await;
    browser.eval("window.confirm = () => true").await;
    browser.click(&format!("{item} .conversation-delete")).await;
    browser
        .wait_text_containing("#conversations", &["No conversations yet"], WAIT)
        .await;
    browser.wait_text("#chat-title", "New chat", WAIT).await;
    let (_, page) = api.get(key, "/v1/conversations").await;
    assert_eq!(page["conversations"], Value::Array(Vec::new()), "{page:#}");

    // A tool's refusal is marked on its call: a wrong id, after which the assistant finds the
    // task in the list and completes it.
    send(&browser, "Add a task to walk the dog").await;
    browser
        .wait_text(
            &format!("{}[data-state=\"done\"] .bubble", message(2)),
            "Added \"Walk the dog\" to your tasks.",
            WAIT,
        )
        .await;
    send(
        &browser,
        "Complete task 00000000-0000-4000-8000-00000000dead, the one about the dog",
    )
    .await;
    let reply = format!("{}[data-state=\"done\"]", message(4));
    browser
        .wait_text(
            &format!("{reply} .bubble"),
            "Marked \"Walk the dog\" as complete.",
            WAIT,
        )
        .await;
    let refused = browser
        .wait_text_containing(
            &format!("{reply} .tool-call.failed[data-tool=\"complete_task\"]"),
            &["error", "there is no task"],
            WAIT,
        )
        .await;
    println!("the refused call: {refused}");
    assert_eq!(count(&browser, &format!("{reply} .tool-call")).await, 3);
    assert_eq!(
        count(&browser, &format!("{reply} .tool-call.failed")).await,
        1
    );
    browser.screenshot("dashboard-chat-tool-error").await;

    // A reply shows as it is written: the fake model sends the first word of this one and
    // never the rest, so the job is still running while the word is on the page.
    browser.click("#chat-new").await;
    browser.wait_text("#chat-title", "New chat", WAIT).await;
    send(&browser, "Please stall").await;
    let pending = format!("{}[data-state=\"pending\"] .bubble", message(2));
    browser.wait_text(&pending, "Let", WAIT).await;
    assert_eq!(
        browser
            .eval("return document.querySelector('#chat-send').disabled")
            .await,
        Value::Bool(true),
        "one turn at a time"
    );
    browser.screenshot("dashboard-chat-typing").await;

    assert_eq!(
        browser
            .eval("return document.querySelector('#error-banner').hidden")
            .await,
        Value::Bool(true),
        "{:?}",
        browser.text("#error-text").await
    );
    drop(browser);
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_llm_the_chat_tab_says_how_to_configure_one() {
    let fleet = ConnectorFleet::start(&[], &[]).await;
    let browser = Browser::start().await;
    browser.sign_in(&fleet.api.base, &fleet.key).await;
    browser.wait_text("#whoami", "acme · tenant", WAIT).await;
    browser.click("button[data-tab=\"chat\"]").await;
    browser
        .wait_text_containing("#chat-usage", &["no limit"], WAIT)
        .await;

    send(&browser, "Add a task to buy milk").await;
    let error = browser
        .wait_text_containing("#chat-error", &["No LLM is set up", "PUT /v1/llm"], WAIT)
        .await;
    println!("the chat's error: {error}");
    browser.screenshot("dashboard-chat-no-llm").await;
    // The message was not sent: it is back in the box, to send once an LLM is configured.
    assert_eq!(count(&browser, "#chat-messages li.msg").await, 0);
    assert_eq!(
        browser
            .eval("return document.querySelector('#chat-input').value")
            .await,
        Value::from("Add a task to buy milk")
    );
    assert_eq!(
        browser
            .eval("return document.querySelector('#chat-send').disabled")
            .await,
        Value::Bool(false)
    );
    let (_, page) = fleet.api.get(&fleet.key, "/v1/conversations").await;
    assert_eq!(page["conversations"], Value::Array(Vec::new()), "{page:#}");
    drop(browser);
    fleet.finish().await;
}
