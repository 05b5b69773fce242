//! The changes an operator may later ask "who did that?" about: each is an audit event with
//! a stable code, the same in the ledger's `audit_events.action`, in `GET /v1/audit` and in
//! its `action` filter.

use poem_openapi::Enum;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Enum, Serialize, Deserialize)]
pub enum AuditAction {
    /// `taskfleet-api keys create`.
    #[oai(rename = "key.created")]
    #[serde(rename = "key.created")]
    KeyCreated,
    /// `taskfleet-api keys revoke`.
    #[oai(rename = "key.revoked")]
    #[serde(rename = "key.revoked")]
    KeyRevoked,
    #[oai(rename = "queue.paused")]
    #[serde(rename = "queue.paused")]
    QueuePaused,
    #[oai(rename = "queue.resumed")]
    #[serde(rename = "queue.resumed")]
    QueueResumed,
    #[oai(rename = "schedule.created")]
    #[serde(rename = "schedule.created")]
    ScheduleCreated,
    /// Replaced by a new definition.
    #[oai(rename = "schedule.updated")]
    #[serde(rename = "schedule.updated")]
    ScheduleUpdated,
    #[oai(rename = "schedule.deleted")]
    #[serde(rename = "schedule.deleted")]
    ScheduleDeleted,
    #[oai(rename = "schedule.paused")]
    #[serde(rename = "schedule.paused")]
    SchedulePaused,
    #[oai(rename = "schedule.resumed")]
    #[serde(rename = "schedule.resumed")]
    ScheduleResumed,
    #[oai(rename = "connector.created")]
    #[serde(rename = "connector.created")]
    ConnectorCreated,
    /// Renamed, another site, or a new token.
    #[oai(rename = "connector.updated")]
    #[serde(rename = "connector.updated")]
    ConnectorUpdated,
    #[oai(rename = "connector.deleted")]
    #[serde(rename = "connector.deleted")]
    ConnectorDeleted,
    /// A tenant's monthly LLM token budget set or given back to the fleet's default.
    #[oai(rename = "budget.changed")]
    #[serde(rename = "budget.changed")]
    BudgetChanged,
    /// A tenant's own rate limits set, changed or given back to the fleet's defaults.
    #[oai(rename = "rate_limits.changed")]
    #[serde(rename = "rate_limits.changed")]
    RateLimitsChanged,
    /// A dead or cancelled job run again by hand.
    #[oai(rename = "job.retried")]
    #[serde(rename = "job.retried")]
    JobRetried,
    /// A tenant's own LLM provider set or replaced.
    #[oai(rename = "llm_provider.set")]
    #[serde(rename = "llm_provider.set")]
    LlmProviderSet,
    #[oai(rename = "llm_provider.deleted")]
    #[serde(rename = "llm_provider.deleted")]
    LlmProviderDeleted,
}

#[cfg(test)]
mod tests {
    use poem_openapi::{registry::Registry, types::Type};

    use super::AuditAction;

    /// Each code is written twice (poem-openapi's name and serde's); every documented code
    /// must be serde's for the same action.
    #[test]
    fn every_code_is_the_same_in_the_ledger_and_the_document() {
        let mut registry = Registry::new();
        AuditAction::register(&mut registry);
        let documented = &registry.schemas["AuditAction"].enum_items;
        assert!(documented.len() >= 17, "{documented:?}");
        for code in documented {
            let action: AuditAction = serde_json::from_value(code.clone())
                .unwrap_or_else(|_| panic!("serde does not know the documented {code}"));
            assert_eq!(serde_json::to_value(action).unwrap(), *code);
            assert_eq!(
                poem_openapi::types::ToJSON::to_json(&action).as_ref(),
                Some(code)
            );
        }
    }
}
