//! Summaries of what was measured.

use std::time::Duration;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

impl Latency {
    pub fn of(mut millis: Vec<f64>) -> Latency {
        if millis.is_empty() {
            return Latency::default();
        }
        millis.sort_by(f64::total_cmp);
        let at = |q: f64| millis[((millis.len() as f64 - 1.0) * q).round() as usize];
        Latency {
            p50: at(0.50),
            p99: at(0.99),
            max: *millis.last().unwrap(),
            samples: millis.len(),
        }
    }
}

/// Items per second.
pub fn rate(items: usize, over: Duration) -> f64 {
    items as f64 / over.as_secs_f64().max(1e-9)
}

/// Peak resident memory of a process so far (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let latency = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!((latency.p50, latency.p99, latency.max), (51.0, 99.0, 100.0));
        assert_eq!(Latency::of(vec![]).samples, 0);
        assert_eq!(rate(500, Duration::from_millis(250)), 2000.0);
    }
}
