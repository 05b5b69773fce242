//! What the worker is told about embedding and ranking, and [`Agents`]: the embedder, the
//! vector store and the formula's settings, opened once per worker process.

use std::{path::PathBuf, sync::Arc};

use tokio::sync::OnceCell;

use anyhow::Context;
use taskfleet_storage::LlmSettings;

use crate::{
    EmbedError, Embedder, LlmModel, LocalModel, OpenAiEmbedder, Reach, VectorStore, Weights,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmbedderKind {
    /// all-MiniLM-L6-v2 on the worker's CPU, no network.
    Local,
    /// An OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, Ollama, vLLM).
    Openai,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AgentSettings {
    /// Which embedder turns task texts into vectors.
    #[arg(long, env = "TASKFLEET_EMBEDDER", value_enum, default_value = "local")]
    pub embedder: EmbedderKind,
    /// Where `make model` unpacked the local model.
    #[arg(
        long,
        env = "TASKFLEET_EMBED_MODEL_DIR",
        default_value = "var/models/all-MiniLM-L6-v2"
    )]
    pub embed_model_dir: PathBuf,
    /// The endpoint's base URL, e.g. `https://api.openai.com/v1` (embedder `openai`).
    #[arg(long, env = "TASKFLEET_EMBED_BASE_URL")]
    pub embed_base_url: Option<String>,
    /// The endpoint's model, e.g. `text-embedding-3-small` (embedder `openai`).
    #[arg(long, env = "TASKFLEET_EMBED_MODEL")]
    pub embed_model: Option<String>,
    /// The endpoint's API key (embedder `openai`; Ollama takes any).
    #[arg(long, env = "TASKFLEET_EMBED_API_KEY", hide_env_values = true)]
    pub embed_api_key: Option<String>,
    /// The vectors' dimension (embedder `openai`).
    #[arg(long, env = "TASKFLEET_EMBED_DIMENSIONS")]
    pub embed_dimensions: Option<usize>,
    /// The lancedb store: a directory, or `s3://bucket/path` (with the `AWS_*` variables).
    #[arg(long, env = "TASKFLEET_VECTOR_URI", default_value = "var/lancedb")]
    pub vector_uri: String,
    /// Cosine similarity from which a task is a near-duplicate of an older one.
    #[arg(long, env = "TASKFLEET_DUPLICATE_THRESHOLD", default_value_t = 0.85)]
    pub duplicate_threshold: f32,
    #[command(flatten)]
    pub llm: LlmSettings,
    /// The formula's weights (ADR 0011).
    #[arg(
        long,
        env = "TASKFLEET_PRIORITY_WEIGHTS",
        default_value = "urgency=0.4,importance=0.3,recency=0.15,source=0.15"
    )]
    pub priority_weights: Weights,
}

impl AgentSettings {
    /// Checks what clap cannot: that the chosen embedder has what it needs.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.duplicate_threshold) {
            return Err("TASKFLEET_DUPLICATE_THRESHOLD must be between 0 and 1".into());
        }
        self.llm.validate()?;
        if self.embedder == EmbedderKind::Openai {
            let missing: Vec<&str> = [
                ("TASKFLEET_EMBED_BASE_URL", self.embed_base_url.is_none()),
                ("TASKFLEET_EMBED_MODEL", self.embed_model.is_none()),
                (
                    "TASKFLEET_EMBED_DIMENSIONS",
                    self.embed_dimensions.is_none(),
                ),
            ]
            .into_iter()
            .filter_map(|(name, absent)| absent.then_some(name))
            .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "TASKFLEET_EMBEDDER=openai needs {}",
                    missing.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The embedder (built on first use: the local model takes a second to load and workers
/// that never embed never pay it), the vector store and the formula's settings.
#[derive(Debug, Clone)]
pub struct Agents {
    settings: Arc<AgentSettings>,
    embedder: Arc<OnceCell<Embedder>>,
    pub store: VectorStore,
    /// The fleet's LLM (`TASKFLEET_LLM_*`), for tenants without their own.
    pub llm: Option<LlmModel>,
}

impl Agents {
    /// Opens the vector store and builds the fleet's LLM; fails when the store cannot be
    /// opened or the LLM's settings are unusable.
    pub async fn open(settings: AgentSettings) -> anyhow::Result<Agents> {
        let store = VectorStore::open(&settings.vector_uri)
            .await
            .context("the vector store (TASKFLEET_VECTOR_URI) cannot be opened")?;
        let llm = match settings.llm.fleet_provider() {
            Some(fleet) => Some(
                LlmModel::new(
                    &fleet.base_url,
                    &fleet.model,
                    &fleet.api_key,
                    settings.llm.call_timeout(),
                    Reach::Anywhere,
                )
                .context("TASKFLEET_LLM_BASE_URL / TASKFLEET_LLM_MODEL")?,
            ),
            None => None,
        };
        Ok(Agents {
            settings: Arc::new(settings),
            embedder: Arc::new(OnceCell::new()),
            store,
            llm,
        })
    }

    pub fn settings(&self) -> &AgentSettings {
        &self.settings
    }

    /// The configured embedder's id, without loading a model.
    pub fn embedder_id(&self) -> Result<String, EmbedError> {
        let settings = &self.settings;
        Ok(match settings.embedder {
            EmbedderKind::Local => LocalModel::ID.to_owned(),
            EmbedderKind::Openai => self.openai()?.id().to_owned(),
        })
    }

    fn openai(&self) -> Result<OpenAiEmbedder, EmbedError> {
        let settings = &self.settings;
        OpenAiEmbedder::new(
            settings.embed_base_url.as_deref().unwrap_or_default(),
            settings.embed_model.as_deref().unwrap_or_default(),
            settings.embed_api_key.as_deref().unwrap_or_default(),
            settings.embed_dimensions.unwrap_or_default(),
        )
        .map_err(|err| EmbedError::Unusable(err.to_string()))
    }

    /// The embedder, built on first use.
    pub async fn embedder(&self) -> Result<&Embedder, EmbedError> {
        self.embedder
            .get_or_try_init(|| async {
                let settings = &self.settings;
                Ok(match settings.embedder {
                    EmbedderKind::Local => {
                        let dir = settings.embed_model_dir.clone();
                        let model = tokio::task::spawn_blocking(move || LocalModel::load(&dir))
                            .await
                            .map_err(|err| EmbedError::Model(err.to_string()))??;
                        Embedder::Local(model)
                    }
                    EmbedderKind::Openai => Embedder::OpenAi(self.openai()?),
                })
            })
            .await
    }
}
