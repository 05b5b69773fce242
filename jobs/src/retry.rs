//! Retry policy: exponential backoff with full jitter, capped, with per-queue defaults.
//!
//! Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter") draws the delay
//! uniformly from `[0, min(cap, base · 2^(attempt-1))]`, which spreads a burst of failures
//! best; the policy is a pure function of the attempt and a random draw so it can be tested.

use std::time::Duration;

use rand::Rng;

use crate::Queue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    pub fn for_queue(queue: Queue) -> RetryPolicy {
        let (base, cap, max_attempts) = match queue {
            // Provider outages last minutes: back off far and try often.
            Queue::Ingest | Queue::Embed | Queue::Agent => (5, 600, 8),
            Queue::Test | Queue::Executor => (1, 60, 3),
            Queue::Schedule => (1, 30, 10),
        };
        RetryPolicy {
            base: Duration::from_secs(base),
            cap: Duration::from_secs(cap),
            max_attempts,
        }
    }

    /// The upper bound of the delay after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << doublings).min(self.cap)
    }

    /// The delay before the attempt after `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        Duration::from_millis(rng.random_range(0..=ceiling.as_millis() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_then_cap() {
        let policy = RetryPolicy::for_queue(Queue::Executor);
        assert_eq!(policy.ceiling(1), Duration::from_secs(1));
        assert_eq!(policy.ceiling(2), Duration::from_secs(2));
        assert_eq!(policy.ceiling(3), Duration::from_secs(4));
        assert_eq!(policy.ceiling(40), Duration::from_secs(60));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let policy = RetryPolicy::for_queue(Queue::Executor);
        let mut rng = rand::rng();
        let delays: Vec<_> = (0..200).map(|_| policy.delay(4, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(8)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 50, "full jitter spreads delays");
    }
}
