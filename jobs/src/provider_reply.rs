//! What an OpenAI-compatible provider (OpenAI, Ollama, vLLM, …) says when it refuses, in the
//! words a person reads in a job's error or a test's answer, and with the caller's API key
//! kept out of them. Shared by the API's `POST /v1/llm/test` and the workers' LLM clients.

use serde_json::Value;

/// The most characters of a body quoted when it is not an error shape we can read.
pub const QUOTED_CHARS: usize = 300;

/// "HTTP 404: The model `x` does not exist (model_not_found)": the status and the provider's
/// own message, from OpenAI's `{"error": {"message", "type", "code"}}` or the plainer shapes
/// of compatible servers (`{"error": "…"}`, `{"message": "…"}`, `{"detail": "…"}`), else the
/// start of the body (an HTML error page says nothing a person needs, and is left out).
pub fn provider_message(status: u16, body: &str) -> String {
    let parsed = serde_json::from_str::<Value>(body).ok();
    let described = parsed.as_ref().and_then(|value| {
        let error = value.get("error");
        let message = error
            .and_then(|error| error.get("message"))
            .and_then(Value::as_str)
            .or_else(|| error.and_then(Value::as_str))
            .or_else(|| value.get("message").and_then(Value::as_str))
            .or_else(|| value.get("detail").and_then(Value::as_str))?;
        let code = error.and_then(|error| {
            ["code", "type"].iter().find_map(|field| {
                error
                    .get(*field)
                    .and_then(Value::as_str)
                    .filter(|code| !code.is_empty())
            })
        });
        Some(match code {
            Some(code) => format!("{message} ({code})"),
            None => message.to_owned(),
        })
    });
    let body = body.trim();
    let detail = match described {
        Some(described) => described,
        None if body.starts_with('<') => String::new(),
        None => match body.char_indices().nth(QUOTED_CHARS) {
            Some((end, _)) => format!("{}…", &body[..end]),
            None => body.to_owned(),
        },
    };
    match detail.is_empty() {
        true => format!("HTTP {status}"),
        false => format!("HTTP {status}: {detail}"),
    }
}

/// `message` without the API key in it.
pub fn scrub(message: String, api_key: &str) -> String {
    // A very short "key" (a local server's placeholder) would match ordinary words.
    if api_key.len() >= 8 && message.contains(api_key) {
        message.replace(api_key, "[redacted]")
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_messages_in_the_shapes_servers_use() {
        assert_eq!(
            provider_message(
                404,
                r#"{"error": {"message": "The model `x` does not exist", "type": "invalid_request_error", "code": "model_not_found"}}"#
            ),
            "HTTP 404: The model `x` does not exist (model_not_found)"
        );
        // vLLM
        assert_eq!(
            provider_message(
                400,
                r#"{"object": "error", "message": "bad dimensions", "type": "BadRequestError", "code": 400}"#
            ),
            "HTTP 400: bad dimensions"
        );
        // Ollama's native shape
        assert_eq!(
            provider_message(404, r#"{"error": "model \"nomic\" not found"}"#),
            "HTTP 404: model \"nomic\" not found"
        );
        assert_eq!(provider_message(502, "  "), "HTTP 502");
        assert_eq!(
            provider_message(502, "<html>Bad gateway</html>"),
            "HTTP 502"
        );
        let long = "x".repeat(1000);
        assert_eq!(
            provider_message(500, &long).chars().count(),
            "HTTP 500: ".len() + QUOTED_CHARS + 1
        );
    }

    #[test]
    fn the_key_never_shows() {
        assert_eq!(
            scrub("bad key sk-secret-123 given".into(), "sk-secret-123"),
            "bad key [redacted] given"
        );
        assert_eq!(scrub("an ollama error".into(), "ollama"), "an ollama error");
    }
}
