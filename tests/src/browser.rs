//! Drives Debian's Chromium through ChromeDriver with the W3C WebDriver protocol (plain HTTP
//! and JSON), so dashboard tests need no Node toolchain and no browser download.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::free_port;

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    profile: PathBuf,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with a fresh profile.
    pub async fn start() -> Browser {
        let port = free_port();
        let mut driver = Command::new("chromedriver");
        crate::dies_with_its_starter(&mut driver);
        let driver = driver
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian package `chromium-driver`; make test installs it)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        crate::wait_until(Duration::from_secs(20), "chromedriver answers", || async {
            http.get(format!("{base}/status")).send().await.is_ok()
        })
        .await;
        let profile = std::env::temp_dir().join(format!("tf-chromium-{}", Uuid::new_v4().simple()));
        // The flags keep Chromium off the network it cannot reach here (background
        // services, component updates) and make it run as root in a container.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,1000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium(), "args": args},
            }}}))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        Browser {
            driver,
            http,
            session: format!("{base}/session/{session}"),
            profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let answer: Value = req.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    /// Opens the dashboard of the API at `base` and signs in with `key`.
    pub async fn sign_in(&self, base: &str, key: &str) {
        self.goto(&format!("{base}/dashboard")).await;
        self.type_into("#api-key", key).await;
        self.click("#login").await;
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The element `css` selects, if there is one now.
    pub async fn find(&self, css: &str) -> Option<String> {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    /// Waits until `css` selects an element and returns it.
    pub async fn wait_for(&self, css: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(element) = self.find(css).await {
                return element;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{css}` on the page after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The visible text of the element `css` selects, if any.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css).await?;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Waits until the text of `css` contains each of `parts`, and returns it.
    pub async fn wait_text_containing(
        &self,
        css: &str,
        parts: &[&str],
        within: Duration,
    ) -> String {
        crate::wait_for_some(within, &format!("`{css}` reads {parts:?}"), || async {
            let text = self.text(css).await?;
            parts.iter().all(|part| text.contains(part)).then_some(text)
        })
        .await
    }

    /// Waits until the text of `css` is `expected`.
    pub async fn wait_text(&self, css: &str, expected: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let text = self.text(css).await;
            if text.as_deref().map(str::trim) == Some(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{css}` reads {text:?}, not {expected:?}, after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
        let element = self.wait_for(css, Duration::from_secs(10)).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.wait_for(css, Duration::from_secs(10)).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs `script` in the page and returns its result.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Saves a PNG of the viewport under `<target>/test-artifacts/` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("a base64 screenshot"))
            .unwrap();
        let exe = std::env::current_exe().unwrap();
        let dir = exe
            .ancestors()
            .nth(3)
            .expect("test executable is in <target>/<profile>/deps")
            .join("test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session closes Chromium; killing the driver then leaves nothing behind.
        let (http, session) = (self.http.clone(), self.session.clone());
        let closed = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { http.delete(session).send().await.is_ok() })
        });
        let _ = closed.join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or("chromium")
}
