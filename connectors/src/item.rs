//! Pages of items (work found at a provider, normalised to what a task needs:
//! [`taskfleet_jobs::Item`]), and the pure functions providers share to make them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use taskfleet_jobs::{Horizon, Item};

/// Longest snippet kept, in characters.
pub const SNIPPET_CHARS: usize = 500;
/// Longest title kept, in characters (a Confluence task's title is its text).
pub const TITLE_CHARS: usize = 200;

/// What one `fetch` brought: its items, the ids of items gone at the source (closed for good,
/// deleted, trashed), and the cursor to fetch from next.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Item>,
    pub gone: Vec<String>,
    /// Where the next `fetch` starts; stored with this page's items.
    pub cursor: Value,
    /// The sweep is over: `cursor` now waits for changes after it.
    pub done: bool,
}

/// The first guess at an item's horizon: due by tomorrow (or overdue) → today; due within a
/// week → this week; pressing at its source (a review asked of the person, a high priority,
/// a starred mail) → this week; anything else → this month.
pub fn horizon_guess(due_at: Option<DateTime<Utc>>, pressing: bool, now: DateTime<Utc>) -> Horizon {
    match due_at.map(|due| due - now) {
        Some(left) if left <= chrono::Duration::days(1) => Horizon::Today,
        Some(left) if left <= chrono::Duration::days(7) => Horizon::Week,
        _ if pressing => Horizon::Week,
        _ => Horizon::Month,
    }
}

/// `text` on one line with its runs of whitespace collapsed, cut to at most `max`
/// characters (an ellipsis ending what was cut).
pub fn clip(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= max {
        return joined;
    }
    let kept: String = joined.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", kept.trim_end())
}

/// A snippet of `text`: at most [`SNIPPET_CHARS`] characters.
pub fn snippet(text: &str) -> String {
    clip(text, SNIPPET_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_follow_the_due_date_then_the_pressure() {
        let now: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        let in_days = |d: i64| Some(now + chrono::Duration::days(d));
        assert_eq!(horizon_guess(in_days(-3), false, now), Horizon::Today);
        assert_eq!(horizon_guess(in_days(1), false, now), Horizon::Today);
        assert_eq!(horizon_guess(in_days(5), false, now), Horizon::Week);
        assert_eq!(horizon_guess(in_days(20), true, now), Horizon::Week);
        assert_eq!(horizon_guess(in_days(20), false, now), Horizon::Month);
        assert_eq!(horizon_guess(None, false, now), Horizon::Month);
    }

    #[test]
    fn snippets_are_one_line_and_bounded() {
        assert_eq!(snippet("  a\n\n b\tc  "), "a b c");
        let long = "word ".repeat(200);
        let cut = snippet(&long);
        assert!(cut.chars().count() <= SNIPPET_CHARS);
        assert!(cut.chars().count() > SNIPPET_CHARS - 5);
        assert!(cut.ends_with('…'));
        assert_eq!(clip("ééééé", 3), "éé…");
    }
}
