//! The six queues. Each job kind belongs to exactly one, and workers choose queues to serve.

use std::{fmt, str::FromStr};

use poem_openapi::Enum;
use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Enum, Serialize, Deserialize,
)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Queue {
    Ingest,
    Embed,
    Agent,
    Test,
    Executor,
    Schedule,
}

impl Queue {
    pub const ALL: [Queue; 6] = [
        Queue::Ingest,
        Queue::Embed,
        Queue::Agent,
        Queue::Test,
        Queue::Executor,
        Queue::Schedule,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Ingest => "ingest",
            Queue::Embed => "embed",
            Queue::Agent => "agent",
            Queue::Test => "test",
            Queue::Executor => "executor",
            Queue::Schedule => "schedule",
        }
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown queue '{0}' (queues: ingest, embed, agent, test, executor, schedule)")]
pub struct UnknownQueue(pub String);

impl FromStr for Queue {
    type Err = UnknownQueue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Queue::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| UnknownQueue(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_round_trips_through_its_name() {
        for q in Queue::ALL {
            assert_eq!(q.as_str().parse::<Queue>().unwrap(), q);
        }
        assert!("nope".parse::<Queue>().is_err());
    }
}
