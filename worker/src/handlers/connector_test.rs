//! `test.connector`: checks a connector's credentials with the provider's cheapest
//! authenticated call and records the result on the connector: `ok`, or an error in words
//! with what to do ("GitHub rejected the token: reconnect the account"). A provider's refusal
//! is the test's answer, so the job succeeds with it; only our own failures (the ledger
//! unreachable) make the job retry.

use serde_json::json;
use taskfleet_connectors::ConnectorStatus;
use taskfleet_jobs::{spec::TestConnector, wire};

use super::{
    HandlerResult, JobContext,
    connector_account::{AccountError, ConnectorAccount, note},
};

pub async fn test(job: &TestConnector, ctx: &JobContext) -> HandlerResult {
    let id = job.connector_id;
    let tested = match ConnectorAccount::open(ctx, id).await {
        Ok(mut account) => account.test().await,
        Err(err) => Err(err),
    };
    let connectors = &ctx.services.connectors;
    let store = |err: sqlx::Error| {
        AccountError::Store(format!("could not record the test: {err}")).into_failure()
    };
    match tested {
        Ok(name) => {
            let message = format!("connected as {name}");
            connectors
                .record_test(ctx.tenant_id, id, true, &message)
                .await
                .map_err(store)?;
            connectors
                .set_status(
                    ctx.tenant_id,
                    id,
                    &wire::name(&ConnectorStatus::Connected),
                    None,
                )
                .await
                .map_err(store)?;
            Ok(json!({ "ok": true, "account": name, "message": message }))
        }
        Err(AccountError::Provider { err, grant }) => {
            let message = err.user_message(grant);
            connectors
                .record_test(ctx.tenant_id, id, false, &message)
                .await
                .map_err(store)?;
            note(ctx, id, &err, grant).await;
            Ok(json!({
                "ok": false,
                "error": err.to_string(),
                "action": err.action(grant),
                "message": message,
            }))
        }
        Err(other) => Err(other.into_failure()),
    }
}
