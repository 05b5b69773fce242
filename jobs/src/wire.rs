//! The wire name of an enum, read from its serde derive: a name is written once, in the
//! derive, and the ledger's text columns use the same one as the JSON.

use serde::{Serialize, de::DeserializeOwned};

/// The name `value` has in JSON (`Horizon::Today` → `today`).
pub fn name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => panic!("not a unit enum variant: {other:?}"),
    }
}

/// The variant whose JSON name is `name`.
pub fn parse<T: DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

#[cfg(test)]
mod tests {
    use crate::task::{Horizon, TaskStatus};

    #[test]
    fn names_round_trip_through_the_derive() {
        assert_eq!(super::name(&Horizon::Week), "week");
        assert_eq!(super::parse::<Horizon>("month"), Some(Horizon::Month));
        assert_eq!(super::parse::<TaskStatus>("done"), Some(TaskStatus::Done));
        assert_eq!(super::parse::<Horizon>("year"), None);
    }
}
