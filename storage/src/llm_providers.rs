//! Each tenant's own LLM provider (bring your own key): an OpenAI-compatible base URL, a model
//! and an API key, the key sealed as connector credentials are and bound to the tenant. A
//! tenant without one uses the fleet's provider, when the fleet has one.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::sealing::{OpenError, Sealer, llm_context};

/// A tenant's provider as it may be shown: never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmProviderRecord {
    pub base_url: String,
    pub model: String,
    /// Whether a key is stored (a local server may take none).
    pub has_key: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A tenant's provider with its key opened, for a worker to call.
#[derive(Clone, PartialEq, Eq)]
pub struct LlmProvider {
    pub base_url: String,
    pub model: String,
    pub api_key: String,
}

impl std::fmt::Debug for LlmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmProvider")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

/// The fleet's LLM, for tenants without their own, and the monthly token budget.
#[derive(Clone, clap::Args)]
pub struct LlmSettings {
    /// The fleet's OpenAI-compatible chat endpoint (OpenAI, Gemini's OpenAI endpoint, Ollama,
    /// vLLM), e.g. `https://api.openai.com/v1`: the chat agent, and the reviewer of
    /// `agent.prioritise`. Unset, only tenants with their own provider (`PUT /v1/llm`) chat.
    #[arg(long, env = "TASKFLEET_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    #[arg(long, env = "TASKFLEET_LLM_MODEL")]
    pub llm_model: Option<String>,
    #[arg(long, env = "TASKFLEET_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Tokens each tenant may spend on LLM calls in a calendar month (UTC); an operator can
    /// set a tenant's own. Unset: no limit.
    #[arg(long, env = "TASKFLEET_LLM_MONTHLY_TOKENS")]
    pub llm_monthly_tokens: Option<i64>,
    /// How long one LLM call may take, connection included, in seconds.
    #[arg(long, env = "TASKFLEET_LLM_TIMEOUT_SECS", default_value_t = 60)]
    pub llm_timeout_secs: u64,
}

impl std::fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSettings")
            .field("llm_base_url", &self.llm_base_url)
            .field("llm_model", &self.llm_model)
            .field(
                "llm_api_key",
                &self.llm_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("llm_monthly_tokens", &self.llm_monthly_tokens)
            .field("llm_timeout_secs", &self.llm_timeout_secs)
            .finish()
    }
}

impl LlmSettings {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.llm_base_url.is_some() != self.llm_model.is_some() {
            return Err("set TASKFLEET_LLM_BASE_URL and TASKFLEET_LLM_MODEL together".into());
        }
        if self.llm_monthly_tokens.is_some_and(|tokens| tokens < 0) {
            return Err("TASKFLEET_LLM_MONTHLY_TOKENS must not be negative".into());
        }
        if self.llm_timeout_secs == 0 {
            return Err("TASKFLEET_LLM_TIMEOUT_SECS must be at least 1".into());
        }
        Ok(())
    }

    pub fn call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.llm_timeout_secs)
    }

    /// The fleet's provider, when one is set.
    pub fn fleet_provider(&self) -> Option<LlmProvider> {
        Some(LlmProvider {
            base_url: self.llm_base_url.clone()?,
            model: self.llm_model.clone()?,
            api_key: self.llm_api_key.clone().unwrap_or_default(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderKeyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("the tenant's LLM API key cannot be opened: {0}")]
    Open(#[from] OpenError),
}

#[derive(Debug, Clone)]
pub struct LlmProviders {
    pool: sqlx::PgPool,
}

impl LlmProviders {
    pub fn new(pool: sqlx::PgPool) -> LlmProviders {
        LlmProviders { pool }
    }

    /// Stores (or replaces) the tenant's provider.
    pub async fn put(
        &self,
        sealer: &Sealer,
        tenant: Uuid,
        provider: &LlmProvider,
    ) -> sqlx::Result<LlmProviderRecord> {
        let sealed = (!provider.api_key.is_empty())
            .then(|| sealer.seal(provider.api_key.as_bytes(), &llm_context(tenant)));
        sqlx::query_as!(
            LlmProviderRecord,
            r#"INSERT INTO llm_providers (tenant_id, base_url, model, api_key)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (tenant_id) DO UPDATE
                   SET base_url = $2, model = $3, api_key = $4, updated_at = now()
               RETURNING base_url, model, api_key IS NOT NULL AS "has_key!", created_at,
                         updated_at"#,
            tenant,
            provider.base_url,
            provider.model,
            sealed,
        )
        .fetch_one(&self.pool)
        .await
    }

    /// The tenant's provider as it may be shown, without opening its key.
    pub async fn record(&self, tenant: Uuid) -> sqlx::Result<Option<LlmProviderRecord>> {
        sqlx::query_as!(
            LlmProviderRecord,
            r#"SELECT base_url, model, api_key IS NOT NULL AS "has_key!", created_at, updated_at
               FROM llm_providers WHERE tenant_id = $1"#,
            tenant,
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// The tenant's provider with its key opened, for a call.
    pub async fn get(
        &self,
        tenant: Uuid,
        sealer: &Sealer,
    ) -> Result<Option<LlmProvider>, ProviderKeyError> {
        let row = sqlx::query!(
            "SELECT base_url, model, api_key FROM llm_providers WHERE tenant_id = $1",
            tenant,
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (base_url, model) = (row.base_url, row.model);
        let api_key = match row.api_key {
            Some(sealed) => String::from_utf8(sealer.open(&sealed, &llm_context(tenant))?)
                .map_err(|_| OpenError::Malformed)?,
            None => String::new(),
        };
        Ok(Some(LlmProvider {
            base_url,
            model,
            api_key,
        }))
    }

    /// Whether the tenant has a provider of its own.
    pub async fn exists(&self, tenant: Uuid) -> sqlx::Result<bool> {
        sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM llm_providers WHERE tenant_id = $1) AS "exists!""#,
            tenant,
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Forgets the tenant's provider (and destroys its sealed key); false when there was none.
    pub async fn delete(&self, tenant: Uuid) -> sqlx::Result<bool> {
        let gone = sqlx::query!("DELETE FROM llm_providers WHERE tenant_id = $1", tenant)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(gone == 1)
    }

    /// Seals every tenant's key under `sealer`'s current key; returns how many were sealed
    /// anew.
    pub async fn reseal(&self, sealer: &Sealer) -> Result<u64, ProviderKeyError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query!(
            r#"SELECT tenant_id, api_key AS "api_key!" FROM llm_providers
               WHERE api_key IS NOT NULL FOR UPDATE"#
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut resealed = 0;
        for row in rows {
            let (tenant, sealed) = (row.tenant_id, row.api_key);
            if sealer.is_current(&sealed) {
                continue;
            }
            let plain = sealer.open(&sealed, &llm_context(tenant))?;
            sqlx::query!(
                "UPDATE llm_providers SET api_key = $2 WHERE tenant_id = $1",
                tenant,
                sealer.seal(&plain, &llm_context(tenant)),
            )
            .execute(&mut *tx)
            .await?;
            resealed += 1;
        }
        tx.commit().await?;
        Ok(resealed)
    }
}
