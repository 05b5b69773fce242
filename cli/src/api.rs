//! The REST API, as the command line calls it: JSON in, JSON out, and an answer that is not
//! a success turned into a [`Failure`] carrying the API's own message.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, header};
use serde_json::Value;

use crate::{config::Target, fail::Failure};

/// How long a plain request may take; streams have no such bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The API's largest page.
const MAX_PAGE: usize = 500;

#[derive(Clone)]
pub struct Api {
    target: Target,
    http: reqwest::Client,
}

impl Api {
    pub fn new(target: Target) -> Api {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("taskfleet-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds");
        Api { target, http }
    }

    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// A request to `path` (under the API's root), authenticated.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.target.url))
            .bearer_auth(&self.target.key)
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        self.send(self.request(Method::GET, path).query(query))
            .await
    }

    /// The items under `field` of a paged list, page after page (`cursor`, `next_cursor`),
    /// up to `limit` of them.
    pub async fn collect(
        &self,
        path: &str,
        field: &str,
        query: &[(&str, String)],
        limit: usize,
    ) -> Result<Vec<Value>, Failure> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        while items.len() < limit {
            let mut page_query = query.to_vec();
            page_query.push(("limit", (limit - items.len()).min(MAX_PAGE).to_string()));
            if let Some(cursor) = &cursor {
                page_query.push(("cursor", cursor.clone()));
            }
            let page = self.get(path, &page_query).await?;
            items.extend(page[field].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        Ok(items)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), Failure> {
        self.send(self.request(Method::DELETE, path))
            .await
            .map(drop)
    }

    /// Sends a request and reads its JSON answer (`null` for an empty one).
    pub async fn send(&self, request: RequestBuilder) -> Result<Value, Failure> {
        let response = self.open(request.timeout(REQUEST_TIMEOUT)).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|err| Failure::unreachable(self.url(), &err))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|err| Failure::Api {
            status: 200,
            code: "not_json".to_owned(),
            message: format!(
                "the answer is not JSON ({err}): is {} a taskfleet API?",
                self.url()
            ),
            retry_after: None,
        })
    }

    /// Sends a request and hands back its response when it is a success, for a caller that
    /// reads the body itself (a stream).
    pub async fn open(&self, request: RequestBuilder) -> Result<Response, Failure> {
        let response = request
            .send()
            .await
            .map_err(|err| Failure::unreachable(self.url(), &err))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(refusal(response).await)
    }
}

/// An id given on the command line: a UUID, checked before it becomes part of a path.
pub fn id(text: &str) -> Result<String, String> {
    let groups: Vec<&str> = text.split('-').collect();
    let shaped = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    if shaped {
        Ok(text.to_ascii_lowercase())
    } else {
        Err("not an id (ids look like 01939c2e-7f7a-7d3c-9a51-0c0f6b1d2e3f)".to_owned())
    }
}

/// The failure an unsuccessful answer stands for, in the API's words.
async fn refusal(response: Response) -> Failure {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok());
    let body: Option<Value> = response.json().await.ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|body| body[name].as_str())
            .map(str::to_owned)
    };
    Failure::Api {
        status: status.as_u16(),
        code: field("error").unwrap_or_else(|| "http".to_owned()),
        message: field("message").unwrap_or_else(|| {
            format!(
                "the API answered {status} without an explanation{}",
                if status.is_server_error() {
                    "; a proxy in front of it may have failed"
                } else {
                    ""
                }
            )
        }),
        retry_after,
    }
}
