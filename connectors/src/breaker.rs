//! A circuit breaker per provider (and per LLM endpoint). After `failures_to_open` calls in a row fail for the
//! provider's own reasons (5xx, timeouts, unreachable), calls fail at once for `cooldown`
//! instead of piling onto an outage; the jobs retry later. Then one call goes through as a
//! probe (half-open): its success closes the circuit, its failure opens it for another
//! cooldown. Answers that show the provider is up (2xx, 4xx, rate limits) count as successes.
//!
//! The state is this process's view; each worker learns an outage from its own calls.

use std::{sync::Mutex, time::Duration};

use taskfleet_telemetry::metrics;
use tokio::time::Instant;

/// How long a caller turned away while a probe is in flight is told to wait.
const PROBE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cooldown is over; `probing` while the one probe call is in flight.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
pub struct Breaker {
    /// The `provider` label of its gauge: a provider's wire name, or `llm`.
    name: String,
    failures_to_open: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Leave to make one call. Settle it with [`Permit::succeeded`] or [`Permit::failed`]; a
/// permit dropped unsettled (its call was cancelled) lets another caller probe.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    pub fn new(name: impl Into<String>, failures_to_open: u32, cooldown: Duration) -> Breaker {
        let breaker = Breaker {
            name: name.into(),
            failures_to_open: failures_to_open.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        breaker.show(State::Closed { failures: 0 });
        breaker
    }

    /// Leave to call the provider, or how long to wait before asking again.
    pub fn admit(&self) -> Result<Permit<'_>, Duration> {
        let mut state = self.state.lock().expect("breaker lock");
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(until - now);
                }
                true
            }
            State::HalfOpen { probing: true } => return Err(PROBE_WAIT),
            State::HalfOpen { probing: false } => true,
        };
        if probe {
            self.set(&mut state, State::HalfOpen { probing: true });
        }
        Ok(Permit {
            breaker: self,
            probe,
            settled: false,
        })
    }

    /// 0 closed, 1 half-open, 2 open: the value of `taskfleet_provider_circuit_state`.
    pub fn gauge_value(&self) -> i64 {
        gauge_value(*self.state.lock().expect("breaker lock"))
    }

    fn settle(&self, probe: bool, ok: bool) {
        let mut state = self.state.lock().expect("breaker lock");
        let next = match (*state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.failures_to_open => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            // A failure of a call admitted before the circuit opened extends nothing.
            (State::Open { until }, false) if !probe => State::Open { until },
            (_, false) => {
                tracing::warn!(provider = %self.name, cooldown = ?self.cooldown, "circuit opened");
                State::Open {
                    until: Instant::now() + self.cooldown,
                }
            }
        };
        self.set(&mut state, next);
    }

    /// A probe whose call was cancelled: another caller may probe.
    fn release_probe(&self) {
        let mut state = self.state.lock().expect("breaker lock");
        if *state == (State::HalfOpen { probing: true }) {
            self.set(&mut state, State::HalfOpen { probing: false });
        }
    }

    fn set(&self, state: &mut State, next: State) {
        *state = next;
        self.show(next);
    }

    fn show(&self, state: State) {
        metrics::PROVIDER_CIRCUIT_STATE
            .with_label_values(&[self.name.as_str()])
            .set(gauge_value(state));
    }
}

fn gauge_value(state: State) -> i64 {
    match state {
        State::Closed { .. } => 0,
        State::HalfOpen { .. } => 1,
        State::Open { .. } => 2,
    }
}

impl Permit<'_> {
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, true);
    }

    pub fn failed(mut self) {
        self.settled = true;
        self.breaker.settle(self.probe, false);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short cooldown: the tests wait it out for real (no paused clock, so that the test
    /// build needs no tokio feature the binaries lack).
    const COOLDOWN: Duration = Duration::from_millis(300);

    fn breaker() -> Breaker {
        Breaker::new("jira", 3, COOLDOWN)
    }

    fn fail(breaker: &Breaker) {
        breaker.admit().expect("admitted").failed();
    }

    fn open(breaker: &Breaker) {
        (0..3).for_each(|_| fail(breaker));
        assert_eq!(breaker.gauge_value(), 2);
    }

    #[test]
    fn opens_after_failures_in_a_row_and_fails_fast() {
        let breaker = breaker();
        fail(&breaker);
        fail(&breaker);
        breaker.admit().unwrap().succeeded();
        fail(&breaker);
        fail(&breaker);
        assert_eq!(
            breaker.gauge_value(),
            0,
            "a success in between resets the count"
        );
        fail(&breaker);
        assert_eq!(breaker.gauge_value(), 2);
        let wait = breaker.admit().err().expect("fails fast while open");
        assert!(wait <= COOLDOWN && wait > COOLDOWN / 2, "{wait:?}");
    }

    #[test]
    fn after_the_cooldown_one_probe_decides() {
        let breaker = breaker();
        open(&breaker);
        std::thread::sleep(COOLDOWN);
        let probe = breaker.admit().expect("the probe goes through");
        assert_eq!(breaker.gauge_value(), 1);
        assert_eq!(
            breaker.admit().err(),
            Some(PROBE_WAIT),
            "one probe at a time"
        );
        probe.failed();
        assert_eq!(breaker.gauge_value(), 2, "a failed probe opens it again");
        assert!(breaker.admit().is_err());

        std::thread::sleep(COOLDOWN);
        breaker.admit().unwrap().succeeded();
        assert_eq!(breaker.gauge_value(), 0);
        breaker.admit().unwrap().succeeded();
    }

    #[test]
    fn a_cancelled_probe_lets_another_caller_probe() {
        let breaker = breaker();
        open(&breaker);
        std::thread::sleep(COOLDOWN);
        drop(breaker.admit().unwrap());
        assert_eq!(breaker.gauge_value(), 1);
        breaker.admit().expect("a new probe").succeeded();
        assert_eq!(breaker.gauge_value(), 0);
    }

    #[test]
    fn late_failures_of_calls_admitted_before_opening_extend_nothing() {
        let breaker = breaker();
        let late = breaker.admit().unwrap();
        open(&breaker);
        let before = breaker.admit().err().unwrap();
        late.failed();
        let after = breaker.admit().err().unwrap();
        assert!(after <= before, "{after:?} > {before:?}");
    }
}
