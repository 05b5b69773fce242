//! When a schedule fires: a cron expression (with seconds) in an IANA time zone, or one
//! instant. Pure rules, so the API validates with the same code the scheduler runs.
//!
//! Daylight-saving transitions follow the `cron` crate (0.16) evaluated in the zone: a local
//! time that does not exist (the hour skipped in spring) does not fire that day; a local time
//! that happens twice (the hour repeated in autumn) fires once, at its first occurrence.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use poem_openapi::Enum;
use serde::{Deserialize, Serialize};

use crate::spec::InvalidJob;

/// Idempotency keys of the jobs a schedule's firing creates: clients cannot claim keys with
/// these prefixes, so a slot's jobs are created once however many schedulers reach it.
pub const RESERVED_KEY_PREFIXES: [&str; 2] = [FIRE_KEY_PREFIX, TARGET_KEY_PREFIX];
const FIRE_KEY_PREFIX: &str = "fire:";
const TARGET_KEY_PREFIX: &str = "schedule:";

/// The idempotency key of the `schedule.fire` job of one slot.
pub fn fire_key(schedule_id: uuid::Uuid, fire_at: DateTime<Utc>) -> String {
    format!("{FIRE_KEY_PREFIX}{schedule_id}:{}", fire_at.to_rfc3339())
}

/// The idempotency key of the target job one slot's firing creates.
pub fn target_key(schedule_id: uuid::Uuid, fire_at: DateTime<Utc>) -> String {
    format!("{TARGET_KEY_PREFIX}{schedule_id}:{}", fire_at.to_rfc3339())
}

/// What to do with firings missed while no scheduler ran (no worker, or a leader change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Enum, Serialize, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// Drop missed firings; carry on with the next slot.
    #[default]
    Skip,
    /// Fire once for everything missed (the latest missed slot), then carry on.
    CatchUpOnce,
}

impl MissedPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            MissedPolicy::Skip => "skip",
            MissedPolicy::CatchUpOnce => "catch_up_once",
        }
    }
}

impl FromStr for MissedPolicy {
    type Err = InvalidJob;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip" => Ok(MissedPolicy::Skip),
            "catch_up_once" => Ok(MissedPolicy::CatchUpOnce),
            other => Err(InvalidJob::new(format!(
                "unknown missed-firing policy `{other}`"
            ))),
        }
    }
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Timing {
    Cron {
        schedule: Box<cron::Schedule>,
        zone: Tz,
    },
    Once(DateTime<Utc>),
}

impl Timing {
    /// Validates a schedule's timing: exactly one of a cron expression (six or seven fields,
    /// seconds first) with an optional IANA zone (default UTC), or an instant. With `now`
    /// (a new or changed schedule) the instant must be in the future.
    pub fn parse(
        cron: Option<&str>,
        time_zone: Option<&str>,
        at: Option<DateTime<Utc>>,
        now: Option<DateTime<Utc>>,
    ) -> Result<Timing, InvalidJob> {
        match (cron, at) {
            (Some(expression), None) => {
                let schedule = cron::Schedule::from_str(expression).map_err(|err| {
                    InvalidJob::new(format!(
                        "invalid cron expression `{expression}`: {err} (six fields, seconds \
                         first: `0 */5 * * * *`)"
                    ))
                })?;
                let zone = match time_zone {
                    None => Tz::UTC,
                    Some(name) => name.parse::<Tz>().map_err(|_| {
                        InvalidJob::new(format!(
                            "unknown time zone `{name}` (IANA names, e.g. Europe/Paris)"
                        ))
                    })?,
                };
                Ok(Timing::Cron {
                    schedule: Box::new(schedule),
                    zone,
                })
            }
            (None, Some(at)) => {
                if time_zone.is_some() {
                    return Err(InvalidJob::new(
                        "`time_zone` goes with `cron`, not with `at`",
                    ));
                }
                if now.is_some_and(|now| at <= now) {
                    return Err(InvalidJob::new(format!(
                        "the instant `{at}` is in the past"
                    )));
                }
                Ok(Timing::Once(at))
            }
            (Some(_), Some(_)) => Err(InvalidJob::new("give either `cron` or `at`, not both")),
            (None, None) => Err(InvalidJob::new("give `cron` (with `time_zone`) or `at`")),
        }
    }

    /// The first firing strictly after `after`, if any.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            // Inside a repeated autumn hour the crate can answer the earlier reading of a
            // local time that is already past: only a later instant counts.
            Timing::Cron { schedule, zone } => schedule
                .after(&after.with_timezone(zone))
                .map(|at| at.with_timezone(&Utc))
                .find(|at| *at > after),
            Timing::Once(at) => (*at > after).then_some(*at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let now = utc("2026-11-22T00:00:00Z");
        let err = |cron, tz, at| Timing::parse(cron, tz, at, Some(now)).unwrap_err().message;
        assert!(err(Some("every day"), None, None).contains("invalid cron expression"));
        assert!(err(Some("0 * * * * *"), Some("Mars/Olympus"), None).contains("unknown time zone"));
        assert!(err(None, None, Some(utc("2026-01-01T00:00:00Z"))).contains("in the past"));
        assert!(err(None, None, None).contains("give `cron`"));
    }

    #[test]
    fn cron_fires_in_its_zone_and_follows_daylight_saving() {
        let now = utc("2026-03-28T00:00:00Z");
        // 02:30 every day in Paris: on 29 March 2026 clocks jump 02:00 → 03:00, so that day
        // has no 02:30 and the next firing is on the 30th.
        let timing =
            Timing::parse(Some("0 30 2 * * *"), Some("Europe/Paris"), None, Some(now)).unwrap();
        let first = timing.next_after(now).unwrap();
        assert_eq!(first, utc("2026-03-28T01:30:00Z"));
        assert_eq!(
            timing.next_after(first).unwrap(),
            utc("2026-03-30T00:30:00Z")
        );
        // On 25 October 2026 02:30 happens twice (CEST, then CET): it fires at the first.
        let autumn = utc("2026-10-24T12:00:00Z");
        let first = timing.next_after(autumn).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        assert_eq!(
            timing.next_after(first).unwrap(),
            utc("2026-10-26T01:30:00Z")
        );
    }

    #[test]
    fn inside_a_repeated_hour_the_next_slot_is_never_in_the_past() {
        // 01:20Z on 25 October 2026 is 02:20 CET, the second pass through 02:xx in Paris.
        let timing =
            Timing::parse(Some("0 */15 * * * *"), Some("Europe/Paris"), None, None).unwrap();
        let after = utc("2026-10-25T01:20:00Z");
        assert_eq!(
            timing.next_after(after).unwrap(),
            utc("2026-10-25T01:30:00Z")
        );
    }

    #[test]
    fn a_one_shot_fires_once() {
        let now = utc("2026-11-22T00:00:00Z");
        let at = utc("2026-11-22T00:00:05Z");
        let timing = Timing::parse(None, None, Some(at), Some(now)).unwrap();
        assert_eq!(timing.next_after(now), Some(at));
        assert_eq!(timing.next_after(at), None);
    }
}
