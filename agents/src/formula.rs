//! The formula prioritiser: four signals in [0, 1] from fields the connectors fill, a
//! weighted sum, a horizon, and a rank within it. Offline, deterministic, and the ranking an
//! LLM reviewer is checked against (ADR 0011 documents every number here).

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use taskfleet_jobs::Horizon;
use uuid::Uuid;

/// What the formula reads of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: Uuid,
    pub source_kind: String,
    pub title: String,
    pub labels: Vec<String>,
    pub due_at: Option<DateTime<Utc>>,
    /// When the provider last saw it change (or when it was typed in, for a manual task).
    pub updated_at: DateTime<Utc>,
}

/// The four signals, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub urgency: f32,
    pub importance: f32,
    pub recency: f32,
    pub source_signal: f32,
}

/// How much each signal counts; the defaults sum to 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub urgency: f32,
    pub importance: f32,
    pub recency: f32,
    pub source_signal: f32,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            urgency: 0.40,
            importance: 0.30,
            recency: 0.15,
            source_signal: 0.15,
        }
    }
}

impl std::str::FromStr for Weights {
    type Err = String;

    /// `urgency=0.4,importance=0.3,recency=0.15,source=0.15`; names left out keep their
    /// defaults.
    fn from_str(text: &str) -> Result<Weights, String> {
        let mut weights = Weights::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not name=value"))?;
            let value: f32 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("`{part}`: the weight must be a number ≥ 0"))?;
            match name.trim() {
                "urgency" => weights.urgency = value,
                "importance" => weights.importance = value,
                "recency" => weights.recency = value,
                "source" | "source_signal" => weights.source_signal = value,
                other => {
                    return Err(format!(
                        "unknown weight `{other}` (urgency, importance, recency, source)"
                    ));
                }
            }
        }
        if weights.urgency + weights.importance + weights.recency + weights.source_signal <= 0.0 {
            return Err("at least one weight must be above 0".into());
        }
        Ok(weights)
    }
}

/// A task's place after ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub id: Uuid,
    pub scores: Scores,
    pub priority: f32,
    pub horizon: Horizon,
    /// 1 is first within the horizon; 1 to 3 are the focus list.
    pub rank: u32,
    pub reason: String,
}

/// A task without a due date reaches `today` from this standing (its priority without the
/// urgency term, which it cannot have), and `week` from the next.
const TODAY_STANDING: f32 = 0.85;
const WEEK_STANDING: f32 = 0.60;

/// Scores and ranks `tasks` at `now` in the tenant's time zone `zone`.
pub fn rank(tasks: &[Candidate], now: DateTime<Utc>, zone: Tz, weights: Weights) -> Vec<Ranked> {
    let total = weights.urgency + weights.importance + weights.recency + weights.source_signal;
    let today = now.with_timezone(&zone).date_naive();
    let mut ranked: Vec<(Ranked, Option<DateTime<Utc>>)> = tasks
        .iter()
        .map(|task| {
            let due_days = task.due_at.map(|due| days_until(due, today, zone));
            let scores = Scores {
                urgency: urgency(due_days),
                importance: importance(task),
                recency: recency(task.updated_at, now),
                source_signal: source_signal(task),
            };
            let priority = (weights.urgency * scores.urgency
                + weights.importance * scores.importance
                + weights.recency * scores.recency
                + weights.source_signal * scores.source_signal)
                / total;
            let undated_total = total - weights.urgency;
            let standing = if undated_total > 0.0 {
                (priority * total - weights.urgency * scores.urgency) / undated_total
            } else {
                0.0
            };
            let horizon = match due_days {
                Some(days) if days <= 0 => Horizon::Today,
                Some(days) if days <= 7 => Horizon::Week,
                Some(_) => Horizon::Month,
                None if standing >= TODAY_STANDING => Horizon::Today,
                None if standing >= WEEK_STANDING => Horizon::Week,
                None => Horizon::Month,
            };
            let reason = reason(task, due_days, &scores);
            let ranked = Ranked {
                id: task.id,
                scores,
                priority,
                horizon,
                rank: 0,
                reason,
            };
            (ranked, task.due_at)
        })
        .collect();
    // Within a horizon: higher priority first, then the earlier due date, then the older task.
    ranked.sort_by(|(a, a_due), (b, b_due)| {
        a.horizon
            .cmp(&b.horizon)
            .then(b.priority.total_cmp(&a.priority))
            .then(
                a_due
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
                    .cmp(&b_due.unwrap_or(DateTime::<Utc>::MAX_UTC)),
            )
            .then(a.id.cmp(&b.id))
    });
    let mut position = 0;
    let mut horizon = None;
    ranked
        .into_iter()
        .map(|(mut task, _)| {
            if horizon != Some(task.horizon) {
                horizon = Some(task.horizon);
                position = 0;
            }
            position += 1;
            task.rank = position;
            task
        })
        .collect()
}

/// Whole days from today to the due date's day, both in the tenant's zone (0: due today,
/// negative: overdue).
fn days_until(due: DateTime<Utc>, today: NaiveDate, zone: Tz) -> i64 {
    let due_day = zone.from_utc_datetime(&due.naive_utc()).date_naive();
    i64::from(due_day.num_days_from_ce() - today.num_days_from_ce())
}

/// Overdue 1.0; due today 0.95; within a week 0.85 down to 0.55; within a month 0.5 down to
/// 0.2; later 0.1; no due date 0.
fn urgency(due_days: Option<i64>) -> f32 {
    match due_days {
        None => 0.0,
        Some(days) if days < 0 => 1.0,
        Some(0) => 0.95,
        Some(days) if days <= 7 => 0.9 - 0.05 * days as f32,
        Some(days) if days <= 30 => 0.5 - 0.3 * (days - 7) as f32 / 23.0,
        Some(_) => 0.1,
    }
}

/// The strongest of the task's markers: Jira priorities, GitHub labels, a review asked of the
/// user, a Confluence task assigned to them, Gmail's importance markers; 0.3 without any.
fn importance(task: &Candidate) -> f32 {
    task.labels
        .iter()
        .map(|label| match label.to_lowercase().as_str() {
            "blocker" | "highest" | "critical" | "p0" | "urgent" | "sev1" | "security" => 1.0,
            "high" | "p1" | "sev2" => 0.8,
            "bug" | "review requested" | "starred" => 0.7,
            "important" | "confluence task" => 0.6,
            "medium" | "p2" => 0.5,
            "low" | "p3" => 0.25,
            "lowest" | "p4" => 0.1,
            _ => 0.3,
        })
        .fold(0.3, f32::max)
}

/// Halves every week since the item last changed.
fn recency(updated_at: DateTime<Utc>, now: DateTime<Utc>) -> f32 {
    let days = (now - updated_at).num_seconds().max(0) as f32 / 86_400.0;
    0.5f32.powf(days / 7.0)
}

/// How directly the item is the user's: assigned (GitHub issues, Jira, Confluence tasks,
/// typed in) 1.0; a review asked of them 0.8; mail to them 0.5; a document shared with them
/// 0.4; their own documents 0.3.
fn source_signal(task: &Candidate) -> f32 {
    let has = |wanted: &str| task.labels.iter().any(|l| l.eq_ignore_ascii_case(wanted));
    match task.source_kind.as_str() {
        "github" if has("review requested") => 0.8,
        "github" | "jira" | "confluence" | "manual" => 1.0,
        "gmail" => 0.5,
        "gdrive" if has("shared with me") => 0.4,
        _ => 0.3,
    }
}

/// One line saying what weighed most.
fn reason(task: &Candidate, due_days: Option<i64>, scores: &Scores) -> String {
    let mut parts = Vec::new();
    match due_days {
        Some(days) if days < -1 => parts.push(format!("overdue by {} days", -days)),
        Some(-1) => parts.push("overdue by a day".to_owned()),
        Some(0) => parts.push("due today".to_owned()),
        Some(1) => parts.push("due tomorrow".to_owned()),
        Some(days) => parts.push(format!("due in {days} days")),
        None => {}
    }
    if scores.importance >= 0.6 {
        let marker = task
            .labels
            .iter()
            .find(|label| importance_of(label) == scores.importance)
            .cloned()
            .unwrap_or_default();
        parts.push(format!("marked {marker}"));
    }
    if scores.recency >= 0.9 {
        parts.push("changed in the last day".to_owned());
    }
    if parts.is_empty() {
        parts.push(format!(
            "no due date; {} item",
            match task.source_kind.as_str() {
                "manual" => "your own",
                kind => kind,
            }
        ));
    }
    parts.join(", ")
}

fn importance_of(label: &str) -> f32 {
    importance(&Candidate {
        id: Uuid::nil(),
        source_kind: String::new(),
        title: String::new(),
        labels: vec![label.to_owned()],
        due_at: None,
        updated_at: DateTime::<Utc>::MIN_UTC,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn task(
        kind: &str,
        labels: &[&str],
        due_in_hours: Option<i64>,
        now: DateTime<Utc>,
    ) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            source_kind: kind.into(),
            title: format!("{kind} {labels:?}"),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            due_at: due_in_hours.map(|h| now + Duration::hours(h)),
            updated_at: now - Duration::days(3),
        }
    }

    fn noon() -> DateTime<Utc> {
        "2026-12-02T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn an_overdue_p0_leads_today_and_each_horizon_is_ranked_from_one() {
        let now = noon();
        let tasks = vec![
            task("jira", &["OPS-1", "Low"], Some(2), now),
            task("github", &["acme/api#7", "p0", "bug"], Some(-50), now),
            task("jira", &["OPS-2", "High"], Some(-2), now),
            task("gmail", &["from Ana"], None, now),
            task("jira", &["OPS-3", "Medium"], Some(24 * 5), now),
            task("gdrive", &["document"], Some(24 * 20), now),
        ];
        let ranked = rank(&tasks, now, chrono_tz::UTC, Weights::default());
        let today: Vec<&Ranked> = ranked
            .iter()
            .filter(|r| r.horizon == Horizon::Today)
            .collect();
        assert_eq!(today[0].id, tasks[1].id, "{ranked:#?}");
        assert_eq!(today[0].rank, 1);
        assert!(
            today[0].reason.contains("overdue by 2 days"),
            "{}",
            today[0].reason
        );
        assert!(today[0].reason.contains("p0"), "{}", today[0].reason);
        assert_eq!(today.len(), 3, "due today or overdue: {today:#?}");
        let week: Vec<&Ranked> = ranked
            .iter()
            .filter(|r| r.horizon == Horizon::Week)
            .collect();
        assert_eq!(week.iter().map(|r| r.rank).collect::<Vec<_>>(), [1]);
        assert_eq!(week[0].id, tasks[4].id);
        let month: Vec<Uuid> = ranked
            .iter()
            .filter(|r| r.horizon == Horizon::Month)
            .map(|r| r.id)
            .collect();
        assert!(month.contains(&tasks[5].id) && month.contains(&tasks[3].id));
        for r in &ranked {
            for s in [
                r.scores.urgency,
                r.scores.importance,
                r.scores.recency,
                r.scores.source_signal,
                r.priority,
            ] {
                assert!((0.0..=1.0).contains(&s), "{r:?}");
            }
        }
    }

    #[test]
    fn due_today_is_read_in_the_tenants_time_zone() {
        // 23:00 UTC on 2 December is already 3 December in Tokyo.
        let now: DateTime<Utc> = "2026-12-02T23:00:00Z".parse().unwrap();
        let due: DateTime<Utc> = "2026-12-03T10:00:00Z".parse().unwrap();
        let mut t = task("jira", &["OPS-9"], None, now);
        t.due_at = Some(due);
        let utc = rank(
            std::slice::from_ref(&t),
            now,
            chrono_tz::UTC,
            Weights::default(),
        );
        let tokyo = rank(&[t], now, chrono_tz::Asia::Tokyo, Weights::default());
        assert_eq!(utc[0].horizon, Horizon::Week);
        assert_eq!(tokyo[0].horizon, Horizon::Today);
    }

    #[test]
    fn an_undated_but_pressing_item_reaches_today_and_a_plain_one_does_not() {
        let now = noon();
        let mut pressing = task("github", &["urgent"], None, now);
        pressing.updated_at = now;
        let plain = task("gdrive", &["document"], None, now);
        let ranked = rank(
            &[pressing.clone(), plain.clone()],
            now,
            chrono_tz::UTC,
            Weights::default(),
        );
        let horizon = |id| ranked.iter().find(|r| r.id == id).unwrap().horizon;
        assert_eq!(horizon(pressing.id), Horizon::Today);
        assert_eq!(horizon(plain.id), Horizon::Month);
    }

    #[test]
    fn weights_parse_by_name_and_refuse_nonsense() {
        let w: Weights = "urgency=1, importance=0".parse().unwrap();
        assert_eq!(w.urgency, 1.0);
        assert_eq!(w.importance, 0.0);
        assert_eq!(w.recency, Weights::default().recency);
        assert!(
            "speed=2"
                .parse::<Weights>()
                .unwrap_err()
                .contains("unknown weight")
        );
        assert!("urgency=-1".parse::<Weights>().is_err());
        assert!(
            "urgency=0,importance=0,recency=0,source=0"
                .parse::<Weights>()
                .is_err()
        );
    }
}
