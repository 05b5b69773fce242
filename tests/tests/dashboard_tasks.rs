//! The dashboard's Tasks tab in a real browser: the focus lists as ranked, a task completed
//! from its card moving to the last 7 days and undone back, and a task added elsewhere
//! showing up once it is ranked, without a reload.

use std::time::Duration;

use taskfleet_tests::{browser::Browser, connector_fleet::ConnectorFleet, json};

const WAIT: Duration = Duration::from_secs(60);

fn column(horizon: &str) -> String {
    format!(".task-column[data-horizon=\"{horizon}\"] ol")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tasks_tab_shows_the_focus_lists_completes_undoes_and_follows_new_rankings() {
    let fleet = ConnectorFleet::start(&["--queues", "embed,agent"], &[]).await;
    let yesterday = chrono::Utc::now() - chrono::Duration::days(1);
    let in_three_days = chrono::Utc::now() + chrono::Duration::days(3);
    for body in [
        json!({"title": "Pay the electricity bill", "due_at": yesterday}),
        json!({"title": "Book the dentist", "due_at": in_three_days}),
    ] {
        let (status, created) = fleet.api.post(&fleet.key, "/v1/tasks", &body).await;
        assert_eq!(status, 201, "{created}");
    }

    let browser = Browser::start().await;
    browser.sign_in(&fleet.api.base, &fleet.key).await;
    browser.wait_text("#whoami", "acme · tenant", WAIT).await;
    browser.click("button[data-tab=\"tasks\"]").await;
    let today = browser
        .wait_text_containing(&column("today"), &["Pay the electricity bill"], WAIT)
        .await;
    assert!(today.contains("1. Pay the electricity bill"), "{today}");
    assert!(today.contains("overdue by a day"), "{today}");
    browser
        .wait_text_containing(&column("week"), &["Book the dentist"], WAIT)
        .await;

    // Complete it from its card: it leaves today and shows among the work done.
    browser
        .click(&format!("{} .task-complete", column("today")))
        .await;
    browser
        .wait_text_containing(&column("past7d"), &["Pay the electricity bill"], WAIT)
        .await;
    browser
        .wait_text_containing(&column("today"), &["Nothing here"], WAIT)
        .await;

    // Undo brings it back.
    browser
        .click(&format!("{} .task-undo", column("past7d")))
        .await;
    browser
        .wait_text_containing(&column("today"), &["Pay the electricity bill"], WAIT)
        .await;

    // A task added through the API appears when its ranking lands.
    browser.eval("window.__loadedOnce = true").await;
    let (status, _) = fleet
        .api
        .post(
            &fleet.key,
            "/v1/tasks",
            &json!({"title": "Renew the passport", "due_at": yesterday}),
        )
        .await;
    assert_eq!(status, 201);
    browser
        .wait_text_containing(&column("today"), &["Renew the passport"], WAIT)
        .await;
    assert_eq!(
        browser.eval("return window.__loadedOnce === true").await,
        true
    );
    fleet.finish().await;
}
