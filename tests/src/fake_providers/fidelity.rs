//! The fakes answer as the real providers do: paging, incremental filters, OAuth flows and
//! their refusals, and fault rules, seen from an HTTP client.

use std::collections::HashSet;

use reqwest::{Client, RequestBuilder, StatusCode, header::HeaderMap, redirect::Policy};
use serde_json::{Value, json};

use super::{FakeProvider, FakeProviders, FaultRule};

const PAT: &str = "ghp_fidelityTestToken";
const EMAIL: &str = "demo@example.com";
const API_TOKEN: &str = "ATATT3xFfGF0fidelity";

fn client() -> Client {
    Client::builder().redirect(Policy::none()).build().unwrap()
}

async fn send(request: RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let response = request.send().await.expect("the fakes answer");
    let (status, headers) = (response.status(), response.headers().clone());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// The URL of `rel` in a `Link` header.
fn link(headers: &HeaderMap, rel: &str) -> Option<String> {
    let links = headers.get("Link")?.to_str().unwrap();
    links.split(", ").find_map(|part| {
        let (url, this_rel) = part.split_once("; ")?;
        (this_rel == format!("rel=\"{rel}\"")).then(|| url.trim_matches(['<', '>']).to_owned())
    })
}

/// Follows an authorization endpoint's redirect and returns the query of its `Location`.
async fn authorize(url: String) -> Vec<(String, String)> {
    let (status, headers, _) = send(client().get(url)).await;
    assert_eq!(status, StatusCode::FOUND);
    let location = header(&headers, "Location");
    let (_, query) = location.split_once('?').expect("a query");
    serde_urlencoded::from_str(query).unwrap()
}

fn value<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    &pairs.iter().find(|(key, _)| key == name).unwrap().1
}

/// Google's consent (online access, no PKCE) and code exchange for `scope`: the token answer.
async fn google_grant(fakes: &FakeProviders, scope: &str) -> Value {
    let pairs = authorize(format!(
        "{}/google/accounts/o/oauth2/v2/auth?client_id=taskfleet-fake-client&redirect_uri=http%3A%2F%2Fapp.test%2Fcb&response_type=code&scope={scope}",
        fakes.url()
    ))
    .await;
    let (_, _, tokens) = send(
        client()
            .post(format!("{}/google/token", fakes.url()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", value(&pairs, "code")),
                ("client_id", "taskfleet-fake-client"),
                ("client_secret", "taskfleet-fake-secret"),
                ("redirect_uri", "http://app.test/cb"),
            ]),
    )
    .await;
    tokens
}

#[tokio::test]
async fn github_pages_250_issues_with_link_headers_and_since_finds_what_changed() {
    let fakes = FakeProviders::start().await;
    fakes.add_github_pat(PAT);
    fakes.seed(FakeProvider::Github, 250);
    let first = format!(
        "{}/github/api/issues?filter=assigned&state=open&sort=updated&direction=asc&per_page=100",
        fakes.url()
    );

    let mut next = Some(first.clone());
    let (mut seen, mut pages, mut newest) = (HashSet::new(), 0, String::new());
    while let Some(url) = next {
        let (status, headers, body) = send(client().get(url).bearer_auth(PAT)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&headers, "x-ratelimit-resource"), "core");
        for issue in body.as_array().unwrap() {
            assert!(seen.insert(issue["id"].as_u64().unwrap()));
            assert_eq!(issue["repository"]["owner"]["login"], "acme");
            newest = issue["updated_at"].as_str().unwrap().to_owned();
        }
        if pages == 0 {
            let last = link(&headers, "last").unwrap();
            assert!(
                last.contains("page=3") && last.contains("direction=asc"),
                "{last}"
            );
        }
        next = link(&headers, "next");
        pages += 1;
    }
    assert_eq!((seen.len(), pages), (250, 3));

    fakes.touch(FakeProvider::Github, &[5, 7]);
    let since = format!("{first}&since={newest}");
    let (_, headers, body) = send(
        client()
            .get(since)
            .header("Authorization", format!("token {PAT}")),
    )
    .await;
    let titles: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|issue| issue["title"].as_str().unwrap())
        .collect();
    // `since` is "updated at or after": the newest item seen comes back with the edits.
    assert_eq!(
        titles,
        [
            "GitHub issue 250",
            "GitHub issue 6 (revised 1)",
            "GitHub issue 8 (revised 1)"
        ]
    );
    assert!(headers.get("Link").is_none(), "one page has no Link header");
}

#[tokio::test]
async fn github_finds_review_requests_only_through_search() {
    let fakes = FakeProviders::start().await;
    fakes.add_github_pat(PAT);
    fakes.seed(FakeProvider::Github, 2);
    fakes.seed_github_review_requests(3);
    let api = format!("{}/github/api", fakes.url());

    let (_, _, assigned) = send(client().get(format!("{api}/issues")).bearer_auth(PAT)).await;
    assert_eq!(assigned.as_array().unwrap().len(), 2);
    let search = client()
        .get(format!("{api}/search/issues"))
        .query(&[
            (
                "q",
                "is:pr is:open review-requested:octo-demo updated:>=2000-01-01T00:00:00Z",
            ),
            ("sort", "updated"),
            ("order", "asc"),
            ("per_page", "2"),
        ])
        .bearer_auth(PAT);
    let (status, headers, body) = send(search).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-ratelimit-resource"), "search");
    assert_eq!(body["total_count"], 3);
    let item = &body["items"][0];
    assert!(
        item["pull_request"]["html_url"]
            .as_str()
            .unwrap()
            .contains("/pull/")
    );
    assert!(item.get("repository").is_none() && item["repository_url"].is_string());
    assert!(
        link(&headers, "next")
            .unwrap()
            .contains("review-requested%3Aocto-demo")
    );

    let (status, _, body) = send(client().get(format!("{api}/user")).bearer_auth("nope")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "Bad credentials");
}

#[tokio::test]
async fn jira_pages_with_next_page_token_and_reads_first_and_later_syncs() {
    let fakes = FakeProviders::start().await;
    fakes.add_atlassian_api_token(EMAIL, API_TOKEN);
    fakes.seed(FakeProvider::Jira, 120);
    fakes.complete(FakeProvider::Jira, 0);
    let search = format!("{}/rest/api/3/search/jql", fakes.site_url());
    let query = |body: Value| {
        client()
            .post(&search)
            .basic_auth(EMAIL, Some(API_TOKEN))
            .json(&body)
    };

    let first_sync = "assignee = currentUser() AND statusCategory != Done ORDER BY updated ASC";
    let (mut token, mut sizes) = (Value::Null, Vec::new());
    loop {
        let mut body = json!({"jql": first_sync, "maxResults": 50, "fields": ["summary", "updated", "status"]});
        if !token.is_null() {
            body["nextPageToken"] = token.clone();
        }
        let (status, _, page) = send(query(body)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        sizes.push(page["issues"].as_array().unwrap().len());
        assert!(
            page["issues"][0]["fields"].get("description").is_none(),
            "only the fields asked for"
        );
        if page["isLast"] == true {
            assert!(page.get("nextPageToken").is_none());
            break;
        }
        token = page["nextPageToken"].clone();
    }
    assert_eq!(sizes, [50, 50, 19], "the done issue is left out");

    fakes.touch(FakeProvider::Jira, &[3]);
    let later = format!(
        "assignee = currentUser() AND updated >= \"{}\" ORDER BY updated ASC",
        chrono::Utc::now().format("%Y/%m/%d %H:%M")
    );
    let (_, _, page) = send(query(
        json!({"jql": later, "fields": ["summary", "description", "status"]}),
    ))
    .await;
    let keys: Vec<&Value> = page["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|issue| &issue["key"])
        .collect();
    assert_eq!(
        keys,
        [&json!("DEMO-1"), &json!("DEMO-4")],
        "the completed one, then the edited one"
    );
    assert_eq!(
        page["issues"][0]["fields"]["status"]["statusCategory"]["key"],
        "done"
    );
    assert_eq!(page["issues"][1]["fields"]["description"]["type"], "doc");

    let (status, _, body) = send(query(json!({"jql": "project = DEMO"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["errorMessages"][0]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    let (status, headers, _) = send(
        client()
            .post(&search)
            .basic_auth(EMAIL, Some("wrong"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&headers, "X-Seraph-LoginReason"),
        "AUTHENTICATED_FAILED"
    );
}

#[tokio::test]
async fn confluence_tasks_page_with_a_next_path_that_keeps_the_query() {
    let fakes = FakeProviders::start().await;
    fakes.add_atlassian_api_token(EMAIL, API_TOKEN);
    fakes.seed(FakeProvider::Confluence, 30);
    let wiki = format!("{}/wiki/api/v2/tasks", fakes.site_url());
    let request = client()
        .get(&wiki)
        .query(&[
            ("assigned-to", "5b10ac8d82e05b22cc7d4ef5"),
            ("status", "incomplete"),
            ("body-format", "atlas_doc_format"),
        ])
        .basic_auth(EMAIL, Some(API_TOKEN));
    let (_, _, page) = send(request).await;
    assert_eq!(page["results"].as_array().unwrap().len(), 25);
    let adf: Value = serde_json::from_str(
        page["results"][0]["body"]["atlas_doc_format"]["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(adf["type"], "doc");
    let next = page["_links"]["next"].as_str().unwrap();
    assert!(
        next.starts_with("/wiki/api/v2/tasks?") && next.contains("status=incomplete"),
        "{next}"
    );

    let (_, _, last) = send(
        client()
            .get(format!("{}{next}", fakes.site_url()))
            .basic_auth(EMAIL, Some(API_TOKEN)),
    )
    .await;
    assert_eq!(last["results"].as_array().unwrap().len(), 5);
    assert!(last["_links"].get("next").is_none());
}

#[tokio::test]
async fn google_oauth_round_trip_with_pkce_then_expiry_and_refresh() {
    let fakes = FakeProviders::start().await;
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let pairs = authorize(format!(
        "{}/google/accounts/o/oauth2/v2/auth?client_id=taskfleet-fake-client&redirect_uri=http%3A%2F%2Fapp.test%2Fcallback&response_type=code&scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fgmail.readonly&access_type=offline&prompt=consent&state=s1&code_challenge={challenge}&code_challenge_method=S256",
        fakes.url()
    ))
    .await;
    assert_eq!(value(&pairs, "state"), "s1");
    assert!(value(&pairs, "scope").contains("gmail.readonly"));
    let token_url = format!("{}/google/token", fakes.url());
    let exchange = |code: &str, verifier: &str| {
        client().post(&token_url).form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", "taskfleet-fake-client"),
            ("client_secret", "taskfleet-fake-secret"),
            ("redirect_uri", "http://app.test/callback"),
            ("code_verifier", verifier),
        ])
    };
    let (status, _, tokens) = send(exchange(value(&pairs, "code"), verifier)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(
        (tokens["expires_in"].as_u64(), tokens["token_type"].as_str()),
        (Some(3599), Some("Bearer"))
    );
    let (status, _, again) = send(exchange(value(&pairs, "code"), verifier)).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "codes are single use"
    );

    let profile = format!("{}/google/api/gmail/v1/users/me/profile", fakes.url());
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        send(client().get(&profile).bearer_auth(access)).await.0,
        StatusCode::OK
    );
    fakes.expire_access_tokens();
    let (status, _, body) = send(client().get(&profile).bearer_auth(access)).await;
    assert_eq!(
        (status, &body["error"]["status"]),
        (StatusCode::UNAUTHORIZED, &json!("UNAUTHENTICATED"))
    );

    let refresh = [
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ("client_id", "taskfleet-fake-client"),
        ("client_secret", "taskfleet-fake-secret"),
    ];
    let (status, _, refreshed) = send(client().post(&token_url).form(&refresh)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        refreshed.get("refresh_token").is_none(),
        "Google keeps the refresh token"
    );
    let access = refreshed["access_token"].as_str().unwrap();
    assert_eq!(
        send(client().get(&profile).bearer_auth(access)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        (
            fakes.refreshes(FakeProvider::Gdrive),
            fakes.code_exchanges(FakeProvider::Gmail)
        ),
        (1, 1)
    );

    fakes.revoke_refresh_tokens();
    let (status, _, body) = send(client().post(&token_url).form(&refresh)).await;
    assert_eq!(
        (status, &body["error_description"]),
        (
            StatusCode::BAD_REQUEST,
            &json!("Token has been expired or revoked.")
        )
    );
}

#[tokio::test]
async fn atlassian_refresh_tokens_rotate_and_a_used_one_is_refused() {
    let fakes = FakeProviders::start().await;
    let pairs = authorize(format!(
        "{}/atlassian/auth/authorize?audience=api.atlassian.com&client_id=taskfleet-fake-client&scope=read%3Ajira-work%20offline_access&redirect_uri=http%3A%2F%2Fapp.test%2Fcb&state=xyz&response_type=code&prompt=consent",
        fakes.url()
    ))
    .await;
    let token_url = format!("{}/atlassian/auth/oauth/token", fakes.url());
    let (_, _, tokens) = send(client().post(&token_url).json(&json!({
        "grant_type": "authorization_code",
        "client_id": "taskfleet-fake-client",
        "client_secret": "taskfleet-fake-secret",
        "code": value(&pairs, "code"),
        "redirect_uri": "http://app.test/cb",
    })))
    .await;
    let first_refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let refresh = |token: &str| {
        client().post(&token_url).json(&json!({
            "grant_type": "refresh_token",
            "client_id": "taskfleet-fake-client",
            "client_secret": "taskfleet-fake-secret",
            "refresh_token": token,
        }))
    };
    let (status, _, rotated) = send(refresh(&first_refresh)).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(rotated["refresh_token"].as_str().unwrap(), first_refresh);
    let (status, _, body) = send(refresh(&first_refresh)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."})
    );

    let access = rotated["access_token"].as_str().unwrap();
    let api = format!("{}/atlassian/api", fakes.url());
    let (_, _, sites) = send(
        client()
            .get(format!("{api}/oauth/token/accessible-resources"))
            .bearer_auth(access),
    )
    .await;
    assert_eq!(sites[0]["id"], fakes.cloud_id().as_str());
    assert_eq!(sites[0]["url"], fakes.site_url().as_str());
    let myself = format!("{api}/ex/jira/{}/rest/api/3/myself", fakes.cloud_id());
    let (status, _, me) = send(client().get(myself).bearer_auth(access)).await;
    assert_eq!(
        (status, &me["accountId"]),
        (StatusCode::OK, &json!("5b10ac8d82e05b22cc7d4ef5"))
    );
    assert_eq!(fakes.refreshes(FakeProvider::Jira), 1);
}

#[tokio::test]
async fn github_refuses_a_bad_code_with_200_and_an_error() {
    let fakes = FakeProviders::start().await;
    let request = client()
        .post(format!("{}/github/login/oauth/access_token", fakes.url()))
        .header("Accept", "application/json")
        .form(&[
            ("client_id", "taskfleet-fake-client"),
            ("client_secret", "taskfleet-fake-secret"),
            ("code", "not-a-code"),
        ]);
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["error"], "bad_verification_code");
    assert!(
        body["error_uri"]
            .as_str()
            .unwrap()
            .ends_with("#bad-verification-code")
    );
}

#[tokio::test]
async fn gmail_history_answers_404_once_expired() {
    let fakes = FakeProviders::start().await;
    fakes.seed(FakeProvider::Gmail, 3);
    let tokens = google_grant(&fakes, "gmail").await;
    assert!(
        tokens.get("refresh_token").is_none(),
        "no refresh token without access_type=offline"
    );
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let gmail = format!("{}/google/api/gmail/v1/users/me", fakes.url());
    let get = |path: String| client().get(format!("{gmail}{path}")).bearer_auth(&access);

    let (_, _, profile) = send(get("/profile".into())).await;
    let start = profile["historyId"].as_str().unwrap().to_owned();
    assert_eq!(fakes.touch(FakeProvider::Gmail, &[0, 0]), 2);
    let (_, _, history) = send(get(format!(
        "/history?startHistoryId={start}&historyTypes=messageAdded&labelId=INBOX"
    )))
    .await;
    let added = &history["history"];
    assert_eq!(added.as_array().unwrap().len(), 2);
    let id = added[0]["messagesAdded"][0]["message"]["id"]
        .as_str()
        .unwrap();
    let (_, _, message) = send(get(format!(
        "/messages/{id}?format=metadata&metadataHeaders=Subject&metadataHeaders=From"
    )))
    .await;
    assert_eq!(message["payload"]["headers"].as_array().unwrap().len(), 2);
    assert_eq!(message["payload"]["headers"][1]["value"], "Gmail message 4");

    fakes.expire_gmail_history();
    let (status, _, body) = send(get(format!("/history?startHistoryId={start}"))).await;
    assert_eq!(
        (status, &body["error"]["errors"][0]["reason"]),
        (StatusCode::NOT_FOUND, &json!("notFound"))
    );
    let current = history["historyId"].as_str().unwrap();
    let (status, _, body) = send(get(format!("/history?startHistoryId={current}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("history").is_none());
}

#[tokio::test]
async fn drive_changes_report_edits_and_trashing() {
    let fakes = FakeProviders::start().await;
    fakes.seed(FakeProvider::Gdrive, 4);
    let tokens = google_grant(&fakes, "drive").await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let drive = format!("{}/google/api/drive/v3", fakes.url());
    let get = |path: &str| client().get(format!("{drive}{path}")).bearer_auth(&access);

    let (_, _, files) = send(get("/files").query(&[
        (
            "q",
            "trashed = false and (modifiedTime > '2000-01-01T00:00:00' or sharedWithMe)",
        ),
        ("orderBy", "modifiedTime desc"),
        ("pageSize", "3"),
    ]))
    .await;
    assert_eq!(files["files"].as_array().unwrap().len(), 3);
    assert!(files["nextPageToken"].is_string());
    let (_, _, start) = send(get("/changes/startPageToken")).await;
    let token = start["startPageToken"].as_str().unwrap();
    fakes.touch(FakeProvider::Gdrive, &[0]);
    fakes.complete(FakeProvider::Gdrive, 1);
    let (_, _, changes) =
        send(get("/changes").query(&[("pageToken", token), ("includeRemoved", "true")])).await;
    let changes = changes["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["file"]["name"], "Drive file 1 (revised 1)");
    assert_eq!(
        (&changes[1]["removed"], &changes[1]["file"]["trashed"]),
        (&json!(false), &json!(true))
    );

    let (status, _, body) = send(get("/files").query(&[("q", "starred = true")])).await;
    assert_eq!(
        (status, &body["error"]["errors"][0]["location"]),
        (StatusCode::BAD_REQUEST, &json!("q"))
    );
}

#[tokio::test]
async fn a_fault_rule_applies_as_many_times_as_asked_then_the_fake_answers() {
    let fakes = FakeProviders::start().await;
    fakes.add_atlassian_api_token(EMAIL, API_TOKEN);
    fakes.seed(FakeProvider::Jira, 1);
    fakes.fail_next(FaultRule::rate_limited(
        FakeProvider::Jira,
        "/search/jql",
        30,
        2,
    ));
    let search = format!("{}/rest/api/3/search/jql", fakes.site_url());
    let body = json!({"jql": "assignee = currentUser()", "fields": ["summary"]});
    for _ in 0..2 {
        let (status, headers, body) = send(
            client()
                .post(&search)
                .basic_auth(EMAIL, Some(API_TOKEN))
                .json(&body),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&headers, "Retry-After"), "30");
        assert_eq!(header(&headers, "X-RateLimit-Remaining"), "0");
        assert!(header(&headers, "X-RateLimit-Reset").ends_with('Z'));
        assert!(body["errorMessages"].is_array());
    }
    let (status, _, page) = send(
        client()
            .post(&search)
            .basic_auth(EMAIL, Some(API_TOKEN))
            .json(&body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["issues"][0]["fields"]["summary"], "Jira issue 1");
    assert_eq!(fakes.requests("/search/jql"), 3);

    fakes.fail_next(FaultRule::slow(
        "/myself",
        std::time::Duration::from_millis(300),
        1,
    ));
    let slow = client()
        .get(format!("{}/rest/api/3/myself", fakes.site_url()))
        .basic_auth(EMAIL, Some(API_TOKEN))
        .timeout(std::time::Duration::from_millis(50));
    assert!(slow.send().await.unwrap_err().is_timeout());
}
