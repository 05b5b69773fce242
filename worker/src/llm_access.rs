//! Which LLM a tenant's job calls, and what its calls cost: the tenant's own provider (`PUT
//! /v1/llm`) or else the fleet's, its endpoint's circuit breaker, and [`JobBudget`], which
//! reserves each call against the tenant's monthly budget, settles it with what the provider
//! reports, counts the tokens in `taskfleet_llm_tokens_total` and times the call in
//! `taskfleet_provider_request_duration_seconds{provider="llm"}`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use taskfleet_agents::{BudgetRefusal, LlmError, LlmModel, Reach, TokenBudget, TokenUsage};
use taskfleet_connectors::breaker::Breaker;
use taskfleet_storage::{Budgets, LlmCallKind, LlmUsage, Reservation, ReserveError};
use taskfleet_telemetry::metrics;
use uuid::Uuid;

use crate::handlers::{JobContext, JobFailure};

/// How long a reservation holds past the call's own timeout, for a worker that dies mid-call.
const HOLD_MARGIN: Duration = Duration::from_secs(60);

/// The model a tenant's jobs call, and whose it is.
pub struct TenantLlm {
    pub model: LlmModel,
    /// `tenant` (its own key) or `fleet`.
    pub owner: &'static str,
    pub breaker: Arc<Breaker>,
}

/// The tenant's own provider, else the fleet's; None when neither is set.
pub async fn tenant_llm(ctx: &JobContext) -> Result<Option<TenantLlm>, JobFailure> {
    let services = &ctx.services;
    let own = services
        .llm_providers
        .get(ctx.tenant_id, &services.sealer)
        .await
        .map_err(|err| match err {
            taskfleet_storage::ProviderKeyError::Db(err) => {
                JobFailure::retryable(format!("could not read the tenant's LLM provider: {err}"))
            }
            open => JobFailure::permanent(open.to_string()),
        })?;
    let (model, owner) = match own {
        Some(provider) => {
            let timeout = services.agents.settings().llm.call_timeout();
            // A URL the tenant typed reaches public addresses only (unless the operator lets
            // local sites in, for fake providers).
            let reach = match services.providers.allow_local_sites() {
                true => Reach::Anywhere,
                false => Reach::Public,
            };
            let model = LlmModel::new(
                &provider.base_url,
                &provider.model,
                &provider.api_key,
                timeout,
                reach,
            )
            .map_err(|err| {
                JobFailure::permanent(format!("the tenant's LLM provider is unusable: {err}"))
            })?;
            (model, "tenant")
        }
        None => match &services.agents.llm {
            Some(model) => (model.clone(), "fleet"),
            None => return Ok(None),
        },
    };
    let breaker = services.providers.llm_breaker(model.base_url());
    Ok(Some(TenantLlm {
        model,
        owner,
        breaker,
    }))
}

/// What a failed model run means for the job: a rejected key or a model that cannot answer
/// is dead at once, a rate limit waits the provider's delay, an outage retries.
pub fn job_failure(error: &LlmError) -> JobFailure {
    JobFailure {
        message: error.to_string(),
        permanent: !error.retryable(),
        retry_after: error.retry_after(),
    }
}

/// The tokens of one job's model calls, against its tenant's budget. Calls of one run come
/// one at a time: each reserves, is sent, and settles before the next reserves.
pub struct JobBudget {
    inner: Arc<BudgetInner>,
}

struct BudgetInner {
    budgets: Budgets,
    tenant: Uuid,
    job: Uuid,
    kind: LlmCallKind,
    model: String,
    hold: Duration,
    state: Mutex<CallState>,
}

#[derive(Default)]
struct CallState {
    reservation: Option<Reservation>,
    started: Option<Instant>,
    spent: TokenUsage,
}

impl JobBudget {
    pub fn new(ctx: &JobContext, kind: LlmCallKind, model: &LlmModel) -> JobBudget {
        JobBudget {
            inner: Arc::new(BudgetInner {
                budgets: ctx.services.budgets.clone(),
                tenant: ctx.tenant_id,
                job: ctx.job_id,
                kind,
                model: model.model().to_owned(),
                hold: model.call_timeout() + HOLD_MARGIN,
                state: Mutex::new(CallState::default()),
            }),
        }
    }

    /// Every token the job's calls spent, as the provider reported them.
    pub fn spent(&self) -> TokenUsage {
        self.inner.state().spent
    }
}

impl BudgetInner {
    fn state(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn usage(&self, usage: TokenUsage) -> LlmUsage<'_> {
        LlmUsage {
            tenant: self.tenant,
            job: Some(self.job),
            model: &self.model,
            kind: self.kind,
            input_tokens: usage.input as i64,
            output_tokens: usage.output as i64,
        }
    }

    /// Lets go of the reservation held, recording `usage`; times the call it was for.
    async fn settle(&self, usage: TokenUsage) {
        let (held, started) = {
            let mut state = self.state();
            state.spent.input += usage.input;
            state.spent.output += usage.output;
            (state.reservation.take(), state.started.take())
        };
        if let Some(started) = started {
            let outcome = if usage.input + usage.output > 0 {
                "ok"
            } else {
                "failed"
            };
            metrics::PROVIDER_REQUEST_DURATION
                .with_label_values(&["llm", outcome])
                .observe(started.elapsed().as_secs_f64());
        }
        for (direction, tokens) in [("input", usage.input), ("output", usage.output)] {
            if tokens > 0 {
                metrics::LLM_TOKENS
                    .with_label_values(&[&self.kind.name(), &self.model, direction])
                    .inc_by(tokens);
            }
        }
        let settled = match &held {
            Some(reservation) => self.budgets.settle(reservation, self.usage(usage)).await,
            None if usage.input + usage.output > 0 => self.budgets.record(self.usage(usage)).await,
            None => Ok(()),
        };
        if let Err(err) = settled {
            // The reservation expires by itself; the usage is lost to the budget.
            tracing::warn!(%err, job = %self.job, "could not settle an LLM call's tokens");
        }
    }
}

impl TokenBudget for JobBudget {
    fn reserve(&self, tokens: u64) -> BoxFuture<'static, Result<(), BudgetRefusal>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // A call that never settled (it failed before answering) lets go first.
            if inner.state().reservation.is_some() {
                inner.settle(TokenUsage::default()).await;
            }
            let tokens = i64::try_from(tokens).unwrap_or(i64::MAX);
            match inner
                .budgets
                .reserve(
                    inner.tenant,
                    Some(inner.job),
                    inner.kind,
                    tokens,
                    inner.hold,
                )
                .await
            {
                Ok(reservation) => {
                    let mut state = inner.state();
                    state.reservation = Some(reservation);
                    state.started = Some(Instant::now());
                    Ok(())
                }
                Err(exceeded @ ReserveError::Exceeded { .. }) => {
                    Err(BudgetRefusal::Exceeded(exceeded.to_string()))
                }
                Err(ReserveError::Db(err)) => Err(BudgetRefusal::Unavailable(err.to_string())),
            }
        })
    }

    fn settle(&self, usage: TokenUsage) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.settle(usage).await })
    }
}

/// What a budget refusal means for the job: a spent budget is dead at once.
pub fn refusal_failure(refusal: &BudgetRefusal) -> JobFailure {
    match refusal {
        BudgetRefusal::Exceeded(_) => JobFailure::permanent(refusal.to_string()),
        BudgetRefusal::Unavailable(_) => JobFailure::retryable(refusal.to_string()),
    }
}
