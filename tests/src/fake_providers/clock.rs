//! Item times that only move forward.
//!
//! Incremental syncs ask "what changed since the newest time I saw" (GitHub `since`, JQL
//! `updated >=`, Drive `modifiedTime >`). A test that seeds, syncs and touches within one second
//! would see a touched item keep its old time at the providers' one-second resolution, so every
//! stamp is at least a second after the one before it.

use chrono::{DateTime, Duration, DurationRound, Utc};

#[derive(Default)]
pub(crate) struct Clock {
    last: Option<DateTime<Utc>>,
}

impl Clock {
    /// `at_least` to the second, or a second after the previous stamp when that is later.
    pub fn stamp(&mut self, at_least: DateTime<Utc>) -> DateTime<Utc> {
        let wanted = at_least
            .duration_trunc(Duration::seconds(1))
            .expect("a second divides any time");
        let stamp = match self.last {
            Some(last) if last >= wanted => last + Duration::seconds(1),
            _ => wanted,
        };
        self.last = Some(stamp);
        stamp
    }

    /// The stamp of a change made now.
    pub fn now(&mut self) -> DateTime<Utc> {
        self.stamp(Utc::now())
    }

    /// The stamps of `n` items seeded together: a minute apart, the newest a minute ago, as if
    /// they had been worked on over the last hours.
    pub fn seeding(&mut self, n: usize) -> Vec<DateTime<Utc>> {
        let now = Utc::now();
        (0..n)
            .map(|i| self.stamp(now - Duration::minutes((n - i) as i64)))
            .collect()
    }
}

/// `2026-11-30T10:00:00Z`: GitHub's times.
pub(crate) fn iso_seconds(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `2026-11-30T10:00:00.000Z`: Confluence's and Google's times.
pub(crate) fn iso_millis(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_taken_in_the_same_second_are_a_second_apart() {
        let mut clock = Clock::default();
        let first = clock.now();
        let second = clock.now();
        assert_eq!(second - first, Duration::seconds(1));
    }

    #[test]
    fn seeded_items_are_in_the_past_and_in_order() {
        let mut clock = Clock::default();
        let stamps = clock.seeding(3);
        assert!(stamps.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(stamps[2] < Utc::now());
    }
}
