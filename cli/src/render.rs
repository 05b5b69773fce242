//! How values look on a terminal: states and events in colour, times relative or local,
//! an event's details in a few words. Colour follows the terminal (and `NO_COLOR`).

use chrono::{DateTime, Local, Utc};
use console::{StyledObject, style};
use serde_json::Value;

/// A job state, coloured by what it means.
pub fn state(state: &str) -> String {
    let styled = style(state);
    match state {
        "succeeded" => styled.green(),
        "dead" => styled.red().bold(),
        "cancelled" => styled.yellow(),
        "running" => styled.cyan(),
        "retrying" => styled.magenta(),
        _ => styled,
    }
    .to_string()
}

/// An event name, coloured by the state it leads to.
pub fn event(name: &str) -> StyledObject<&str> {
    let styled = style(name);
    match name {
        "job_succeeded" => styled.green(),
        "job_dead" | "job_failed" => styled.red(),
        "job_retry_scheduled" => styled.magenta(),
        "job_cancelled" | "job_cancel_requested" => styled.yellow(),
        "job_started" => styled.cyan(),
        "job_progress" => styled.blue(),
        "lease_reclaimed" | "stale_write_rejected" | "worker_offline" | "queue_paused" => {
            styled.magenta().bold()
        }
        _ => styled.dim(),
    }
}

/// A field of a JSON object as text, empty when absent or null.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    value
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// "12s ago", "in 3m": how far a time is from now.
pub fn relative(value: &Value) -> String {
    let Some(at) = timestamp(value) else {
        return String::new();
    };
    let seconds = (Utc::now() - at).num_seconds();
    let span = |s: i64| match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    };
    if seconds >= 0 {
        format!("{} ago", span(seconds))
    } else {
        format!("in {}", span(-seconds))
    }
}

/// A time as the local wall clock, to the millisecond.
pub fn clock(value: &Value) -> String {
    timestamp(value)
        .map(|t| t.with_timezone(&Local).format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default()
}

/// A time as a local date and time with its distance from now.
pub fn when(value: &Value) -> String {
    timestamp(value)
        .map(|t| {
            format!(
                "{} ({})",
                t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S"),
                relative(value)
            )
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// A duration in seconds, as people read one.
pub fn seconds(value: f64) -> String {
    if value < 1.0 {
        format!("{:.0}ms", value * 1000.0)
    } else if value < 60.0 {
        format!("{value:.1}s")
    } else {
        format!("{:.1}m", value / 60.0)
    }
}

/// An event's details in a few words.
pub fn details(event: &str, details: &Value) -> String {
    let field = |name: &str| text(&details[name]);
    match event {
        "job_progress" => match details["percent"].as_f64() {
            Some(percent) => format!("{percent:.0}% {}", field("message")),
            None => field("message"),
        },
        "job_started" => format!("attempt {}", field("attempt")),
        "job_succeeded" => match details["runtime_ms"].as_f64() {
            Some(ms) => format!("attempt {} in {}", field("attempt"), seconds(ms / 1000.0)),
            None => String::new(),
        },
        "job_failed" | "job_retry_scheduled" => match timestamp(&details["retry_at"]) {
            Some(_) => format!(
                "attempt {}: {} (retry {})",
                field("attempt"),
                field("error"),
                relative(&details["retry_at"])
            ),
            None => format!("attempt {}: {}", field("attempt"), field("error")),
        },
        "job_dead" => {
            let why = if details["error"].is_null() {
                field("reason")
            } else {
                field("error")
            };
            format!("attempt {}: {why}", field("attempt"))
        }
        _ => match details.as_object() {
            Some(map) if map.is_empty() => String::new(),
            None => String::new(),
            Some(map) => map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect::<Vec<_>>()
                .join(" "),
        },
    }
}

/// The first line of a possibly long text, for a table cell.
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}
