//! What the OpenAPI document says that poem-openapi cannot: links from each operation that
//! creates a resource to the operations that take its id, so a client (or schemathesis's
//! stateful phase) can follow a create to its get, change, cancel, retry and delete; and each
//! event stream documented as the events it sends (`id`, `event`, and `data` holding the
//! JSON of the item schema) rather than as a JSON array. And a field that refers to another
//! schema is written in the form client generators read: poem-openapi writes
//! `allOf: [{$ref}, {description, nullable}]`, which a generator cannot take for an enum
//! (openapi-python-client drops the whole object); here it becomes `allOf: [{$ref}]`, or
//! `anyOf: [{$ref}], nullable: true`, with the description beside it. And the rate limits'
//! headers on every answer they come with.

use serde_json::{Map, Value, json};

/// An operation that creates, where the id is in its answer, and the operations that take it
/// (with the path parameter that takes it).
type Link = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const LINKS: &[Link] = &[
    (
        "createJob",
        "$response.body#/id",
        &[
            ("getJob", "id"),
            ("cancelJob", "id"),
            ("retryJob", "id"),
            ("streamJobEvents", "id"),
        ],
    ),
    (
        "createSchedule",
        "$response.body#/id",
        &[
            ("getSchedule", "id"),
            ("replaceSchedule", "id"),
            ("pauseSchedule", "id"),
            ("resumeSchedule", "id"),
            ("deleteSchedule", "id"),
        ],
    ),
    (
        "createConnector",
        "$response.body#/id",
        &[
            ("getConnector", "id"),
            ("updateConnector", "id"),
            ("authorizeConnector", "id"),
            ("syncConnector", "id"),
            ("testConnector", "id"),
            ("deleteConnector", "id"),
        ],
    ),
    (
        "createTask",
        "$response.body#/id",
        &[
            ("getTask", "id"),
            ("updateTask", "id"),
            ("completeTask", "id"),
            ("undoTask", "id"),
            ("deleteTask", "id"),
        ],
    ),
    (
        "chat",
        "$response.body#/conversation_id",
        &[("getConversation", "id"), ("deleteConversation", "id")],
    ),
];

/// The document `spec` as poem-openapi wrote it, finished: [`LINKS`] on every 2xx answer of
/// the creating operations, and event streams described event by event.
pub fn finish(spec: &str) -> String {
    let mut spec: Value = serde_json::from_str(spec).expect("the spec is JSON");
    add_links(&mut spec);
    describe_event_streams(&mut spec);
    flatten_references(&mut spec);
    add_rate_limit_headers(&mut spec);
    serde_json::to_string(&spec).expect("JSON writes")
}

/// Every operation of the document whose path `keep` accepts.
fn operations_mut(
    spec: &mut Value,
    keep: impl Fn(&str) -> bool,
) -> impl Iterator<Item = &mut Map<String, Value>> {
    spec["paths"]
        .as_object_mut()
        .expect("the spec has paths")
        .iter_mut()
        .filter(move |(path, _)| keep(path))
        .filter_map(|(_, methods)| methods.as_object_mut())
        .flat_map(|methods| methods.values_mut())
        .filter_map(Value::as_object_mut)
}

/// Every answer of the operations [`operations_mut`] gives.
fn responses_mut(
    spec: &mut Value,
    keep: impl Fn(&str) -> bool,
) -> impl Iterator<Item = &mut Map<String, Value>> {
    operations_mut(spec, keep)
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(Value::as_object_mut)
}

fn add_links(spec: &mut Value) {
    for (creator, id_at, targets) in LINKS {
        let operation = operations_mut(spec, |_| true)
            .find(|operation| operation.get("operationId") == Some(&json!(creator)))
            .unwrap_or_else(|| panic!("the document has an operation `{creator}`"));
        let links: Map<String, Value> = targets
            .iter()
            .map(|(target, parameter)| {
                (
                    target.to_string(),
                    json!({"operationId": target, "parameters": {*parameter: id_at}}),
                )
            })
            .collect();
        let responses = operation["responses"]
            .as_object_mut()
            .expect("an operation has responses");
        for (status, response) in responses.iter_mut() {
            if status.starts_with('2') {
                response["links"] = Value::Object(links.clone());
            }
        }
    }
}

/// Every answer of a rate-limited route (`rate_limit`: `/v1`, but the OAuth callback)
/// carries the `RateLimit-*` headers while limits are on; poem-openapi documents headers only
/// per response type, so they are added here.
fn add_rate_limit_headers(spec: &mut Value) {
    let headers = json!({
        "RateLimit-Limit": {"description": "The burst this key may make in this class of route.",
                            "schema": {"type": "integer", "minimum": 1}},
        "RateLimit-Remaining": {"description": "Requests left in the burst now.",
                                "schema": {"type": "integer", "minimum": 0}},
        "RateLimit-Reset": {"description": "Seconds until the burst is whole again.",
                            "schema": {"type": "integer", "minimum": 0}},
    });
    let limited = |path: &str| path.starts_with("/v1/") && !path.starts_with("/v1/oauth/callback");
    let responses = responses_mut(spec, limited);
    for response in responses {
        let documented = response.entry("headers").or_insert_with(|| json!({}));
        if let (Some(documented), Some(headers)) = (documented.as_object_mut(), headers.as_object())
        {
            for (name, header) in headers {
                documented
                    .entry(name.clone())
                    .or_insert_with(|| header.clone());
            }
        }
    }
}

/// Rewrites, everywhere in `node`, `allOf: [{$ref}, {keywords}]` (keywords that add no
/// type of their own) as the reference with the keywords beside it.
fn flatten_references(node: &mut Value) {
    match node {
        Value::Object(object) => {
            object.values_mut().for_each(flatten_references);
            let Some(Value::Array(all_of)) = object.get("allOf") else {
                return;
            };
            let [reference, Value::Object(keywords)] = all_of.as_slice() else {
                return;
            };
            let adds_a_type = ["type", "properties", "$ref", "allOf", "anyOf", "oneOf"]
                .iter()
                .any(|key| keywords.contains_key(*key));
            if reference.get("$ref").is_none() || adds_a_type {
                return;
            }
            let (reference, mut keywords) = (reference.clone(), keywords.clone());
            object.remove("allOf");
            if keywords.remove("nullable") == Some(Value::Bool(true)) {
                object.insert("anyOf".into(), json!([reference]));
                object.insert("nullable".into(), Value::Bool(true));
            } else {
                object.insert("allOf".into(), json!([reference]));
            }
            object.extend(keywords);
        }
        Value::Array(items) => items.iter_mut().for_each(flatten_references),
        _ => {}
    }
}

/// poem-openapi documents a stream of `T` as an array of `T`; a client reads an SSE stream
/// event by event, each with an `id`, an `event` name and `data`, the JSON of one `T`. Before
/// OpenAPI 3.2's `itemSchema`, the `schema` of `text/event-stream` describes one event.
fn describe_event_streams(spec: &mut Value) {
    let media_types = responses_mut(spec, |_| true)
        // `get_mut`, not indexing: indexing would add `content: null` where there is none.
        .filter_map(|response| response.get_mut("content")?.get_mut("text/event-stream"));
    for media_type in media_types {
        let item = media_type["schema"]["items"].take();
        media_type["schema"] = json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "id": {"type": "string", "description": "Send as `Last-Event-ID` to resume."},
                "event": {"type": "string", "description": "The event's name."},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": item,
                },
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_names_an_operation_of_the_document_and_a_parameter_it_takes() {
        let spec: Value = serde_json::from_str(&crate::app::spec()).unwrap();
        let operations: Vec<&Value> = spec["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|methods| methods.as_object().unwrap().values())
            .collect();
        let operation = |id: &str| {
            operations
                .iter()
                .find(|op| op["operationId"] == id)
                .unwrap_or_else(|| panic!("no operation {id}"))
        };
        for (creator, _, targets) in LINKS {
            let responses = operation(creator)["responses"].as_object().unwrap();
            let linked: Vec<_> = responses
                .iter()
                .filter(|(status, _)| status.starts_with('2'))
                .collect();
            assert!(!linked.is_empty(), "{creator} answers no 2xx");
            for (_, response) in linked {
                for (target, parameter) in *targets {
                    assert_eq!(response["links"][target]["operationId"], *target);
                    let takes = operation(target)["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == *parameter && p["in"] == "path");
                    assert!(takes, "{target} takes no path parameter {parameter}");
                }
            }
        }
    }

    #[test]
    fn every_event_stream_is_described_event_by_event() {
        let spec: Value = serde_json::from_str(&crate::app::spec()).unwrap();
        let streams: Vec<&Value> = spec["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|methods| methods.as_object().unwrap().values())
            .flat_map(|op| op["responses"].as_object().unwrap().values())
            .filter_map(|response| response["content"].get("text/event-stream"))
            .collect();
        // The job's events, everyone's events, and the connector tests' results.
        assert_eq!(streams.len(), 3);
        for stream in streams {
            let data = &stream["schema"]["properties"]["data"];
            assert_eq!(data["contentMediaType"], "application/json", "{stream}");
            assert!(data["contentSchema"]["$ref"].is_string(), "{stream}");
        }
    }

    #[test]
    fn answers_of_limited_routes_document_the_rate_limit_headers() {
        let spec: Value = serde_json::from_str(&crate::app::spec()).unwrap();
        let job = &spec["paths"]["/v1/jobs"]["post"]["responses"];
        for status in ["201", "429"] {
            assert!(
                job[status]["headers"]["RateLimit-Remaining"].is_object(),
                "{job}"
            );
        }
        // poem-openapi writes its own headers' names in capitals; they mean the same.
        let retry_after = job["429"]["headers"].as_object().unwrap().keys();
        assert!(
            retry_after
                .into_iter()
                .any(|name| name.eq_ignore_ascii_case("retry-after")),
            "{job}"
        );
        let health = &spec["paths"]["/healthz"]["get"]["responses"]["200"];
        assert!(health.get("headers").is_none(), "{health}");
    }
}
