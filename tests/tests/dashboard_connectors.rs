//! The dashboard's Connectors tab in a real browser (headless Chromium through ChromeDriver),
//! against the fake providers: a GitHub account connected by token brings its issues in,
//! "Test all" shows each row's test live and then the counts, a pending Jira connection opens
//! its consent page, an API error reaches the banner, and a GitHub token that GitHub rejects
//! shows what GitHub said on its row.

use std::time::Duration;

use serde_json::Value;
use taskfleet_tests::{
    Api, TestEnv,
    browser::Browser,
    fake_providers::{FakeProvider, FakeProviders},
    json, wait_for_some,
};

const WAIT: Duration = Duration::from_secs(30);

/// The selector of a connector's row.
fn row(id: &str) -> String {
    format!("#connectors-table tr[data-connector-id=\"{id}\"]")
}

/// Chooses `provider` in the form, as a person picking it from the list does.
async fn choose_provider(browser: &Browser, provider: &str) {
    let script = format!(
        "const select = document.querySelector('#connector-provider'); \
         select.value = '{provider}'; select.dispatchEvent(new Event('change'));"
    );
    browser.eval(&script).await;
}

/// The tenant's connector of `provider`, once there is one.
async fn connector_of(api: &Api, key: &str, provider: &str) -> Value {
    wait_for_some(
        WAIT,
        &format!("a {provider} connector is listed"),
        || async {
            let (status, list) = api.get(key, "/v1/connectors").await;
            assert_eq!(status, 200, "{list}");
            list["connectors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["provider"] == provider)
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connectors_tab_connects_tests_and_shows_what_providers_said() {
    let fake = FakeProviders::start().await;
    fake.seed(FakeProvider::Github, 5);
    fake.add_github_pat("ghp_demo");
    let env_vars = fake.env();
    let pairs: Vec<(&str, &str)> = env_vars
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let mut env = TestEnv::new().await;
    let api = env.start_api(&pairs).await;
    env.start_worker_env(&["--queues", "ingest,test,executor,schedule"], &pairs);
    let acme = env.create_key("acme");

    let (status, github) = api
        .post(
            &acme,
            "/v1/connectors",
            &json!({"provider": "github", "token": "ghp_demo"}),
        )
        .await;
    assert_eq!(status, 201, "{github}");
    let (status, jira) = api
        .post(&acme, "/v1/connectors", &json!({"provider": "jira"}))
        .await;
    assert_eq!(status, 201, "{jira}");
    assert_eq!(jira["status"], "pending_auth", "{jira}");
    let github_row = row(github["id"].as_str().unwrap());
    let jira_row = row(jira["id"].as_str().unwrap());

    let browser = Browser::start().await;
    browser.sign_in(&api.base, &acme).await;
    browser.wait_text("#whoami", "acme · tenant", WAIT).await;
    // Set once; still there at the end means the page never reloaded.
    browser.eval("window.__loadedOnce = true").await;
    browser.click("button[data-tab=\"connectors\"]").await;

    // The GitHub account is connected and its first ingest brings the seeded issues in.
    browser
        .wait_text(&format!("{github_row} td.status"), "connected", WAIT)
        .await;
    let items = wait_for_some(WAIT, "the GitHub row counts items", || async {
        let text = browser.text(&format!("{github_row} td.items")).await?;
        let count: u64 = text.trim().parse().ok()?;
        (count > 0).then_some(count)
    })
    .await;
    println!("GitHub items: {items}");

    // The Jira connection waits for its grant: no test or sync, a Connect button that opens
    // the consent page (window.open is recorded instead of opening a window).
    browser
        .wait_text(&format!("{jira_row} td.status"), "pending_auth", WAIT)
        .await;
    let buttons = format!(
        "const row = document.querySelector('{}'); \
         return ['test', 'sync', 'connect'].map((b) => [row.querySelector('button.' + b).disabled, \
                row.querySelector('button.' + b).hidden]);",
        jira_row.replace('\'', "\\'")
    );
    assert_eq!(
        browser.eval(&buttons).await,
        json!([[true, false], [true, false], [false, false]])
    );
    assert_eq!(
        browser
            .eval(&format!(
                "return document.querySelector('{} button.connect').hidden",
                github_row.replace('\'', "\\'")
            ))
            .await,
        Value::Bool(true),
        "a token connector has no Connect button"
    );
    browser
        .eval("window.open = (url) => { window.__opened = url; return {}; }")
        .await;
    browser.click(&format!("{jira_row} button.connect")).await;
    let opened = wait_for_some(WAIT, "the consent page is opened", || async {
        browser
            .eval("return window.__opened ?? null")
            .await
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(
        opened.starts_with(&format!("{}/atlassian/auth/authorize?", fake.url()))
            && opened.contains("state="),
        "{opened}"
    );

    // Test all: the row shows its test live ("testing…" is recorded as it passes), then the
    // result; the pending Jira connector has no credentials and is not tested. Each change
    // is recorded, not the cell at the observer's turn: "testing…" and the result can land
    // in one task when both events come in one read.
    let observe = format!(
        "const cell = document.querySelector('{} td.last-test'); window.__seen = []; \
         new MutationObserver(records => records.forEach(r => window.__seen.push( \
             r.type === 'characterData' ? r.target.data \
               : Array.from(r.addedNodes).map(n => n.textContent).join('')))) \
           .observe(cell, {{childList: true, characterData: true, subtree: true}});",
        github_row.replace('\'', "\\'")
    );
    browser.eval(&observe).await;
    browser.click("#connectors-test-all").await;
    let result = browser
        .wait_text_containing(&format!("{github_row} td.last-test"), &["ok"], WAIT)
        .await;
    browser
        .wait_text_containing("#connectors-test-summary", &["1 ok", "0 failed"], WAIT)
        .await;
    println!("GitHub test: {result}");
    let seen = browser.eval("return window.__seen").await;
    assert!(
        seen.as_array()
            .unwrap()
            .iter()
            .any(|text| text == "testing…"),
        "{seen}"
    );
    browser
        .wait_text(&format!("{jira_row} td.last-test"), "—", WAIT)
        .await;
    let enabled = "return !document.querySelector('#connectors-test-all').disabled";
    assert_eq!(browser.eval(enabled).await, Value::Bool(true));
    let shot = browser.screenshot("dashboard-connectors").await;
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "{}",
        shot.display()
    );
    println!("screenshot: {}", shot.display());

    // An API error reaches the banner: an Atlassian API token without its email.
    choose_provider(&browser, "jira").await;
    browser.type_into("#connector-token", "atl_token").await;
    browser.click("#connector-add").await;
    browser
        .wait_text_containing("#error-text", &["email"], WAIT)
        .await;
    browser.click("#error-dismiss").await;
    browser
        .eval("document.querySelector('#connector-token').value = ''")
        .await;

    // GitHub stops accepting the token: delete the connector with its button and connect
    // again through the form with a token GitHub rejects, then test it from its row.
    browser.eval("window.confirm = () => true").await;
    browser.click(&format!("{github_row} button.delete")).await;
    wait_for_some(WAIT, "the deleted row goes", || async {
        browser.find(&github_row).await.is_none().then_some(())
    })
    .await;
    choose_provider(&browser, "github").await;
    browser.type_into("#connector-token", "ghp_wrong").await;
    browser.click("#connector-add").await;
    let wrong = connector_of(&api, &acme, "github").await;
    assert_ne!(wrong["id"], github["id"]);
    let wrong_row = row(wrong["id"].as_str().unwrap());
    browser.wait_for(&wrong_row, WAIT).await;
    browser.click(&format!("{wrong_row} button.test")).await;
    let result = browser
        .wait_text_containing(
            &format!("{wrong_row} td.last-test"),
            &["error", "GitHub rejected the token"],
            WAIT,
        )
        .await;
    println!("GitHub test with a rejected token: {result}");
    let status = browser
        .wait_text_containing(
            &format!("{wrong_row} td.status"),
            &["reauth_required"],
            WAIT,
        )
        .await;
    println!("its status: {status}");
    browser.screenshot("dashboard-connectors-rejected").await;

    assert_eq!(
        browser
            .eval("return document.querySelector('#error-banner').hidden")
            .await,
        Value::Bool(true),
        "{:?}",
        browser.text("#error-text").await
    );
    assert_eq!(
        browser.eval("return window.__loadedOnce === true").await,
        Value::Bool(true)
    );
    drop(browser);
    env.finish().await;
}
