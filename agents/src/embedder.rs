//! Embedders turn task texts into vectors. Two kinds: the local sentence model, run on the
//! worker's CPU with no network ([`LocalModel`]), and any OpenAI-compatible `/v1/embeddings`
//! endpoint through rig-core ([`OpenAiEmbedder`]). Each has an id that names its coordinate
//! space: vectors are stored under it and only ever compared with vectors of the same id.

use std::time::Duration;

use crate::{Space, local_model::LocalModel, openai_embedder::OpenAiEmbedder};

/// Why a batch could not be embedded, sorted by what the job should do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    /// The provider refused the credentials (401/403): retrying cannot help.
    #[error("the embedding provider rejected the API key")]
    Rejected,
    /// The provider asked us to slow down (429); `retry_after` is its delay when it said.
    #[error("the embedding provider is rate limiting: {message}")]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// The provider failed or could not be reached (5xx, timeouts, connection errors).
    #[error("the embedding provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something we cannot use (a 4xx other than the above, a wrong
    /// count or dimension): retrying the same request would get the same answer.
    #[error("the embedding provider answered unusably: {0}")]
    Unusable(String),
    /// The local model failed.
    #[error("the local embedding model failed: {0}")]
    Model(String),
}

impl EmbedError {
    /// Whether the job may succeed on a later attempt.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            EmbedError::RateLimited { .. } | EmbedError::Unavailable(_)
        )
    }

    /// The delay the provider asked for, when it asked.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EmbedError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Vectors, and what the provider charged for them (0 for the local model).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One unit-length vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    pub input_tokens: u64,
}

/// The worker's embedder, chosen by `TASKFLEET_EMBEDDER`.
#[derive(Clone)]
pub enum Embedder {
    Local(LocalModel),
    OpenAi(OpenAiEmbedder),
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("id", &self.id())
            .field("dimensions", &self.dimensions())
            .finish()
    }
}

impl Embedder {
    /// Names the coordinate space: the model, and for an endpoint, where it is served.
    pub fn id(&self) -> &str {
        match self {
            Embedder::Local(model) => model.id(),
            Embedder::OpenAi(endpoint) => endpoint.id(),
        }
    }

    /// The coordinate space its vectors live in.
    pub fn space(&self) -> Space {
        Space {
            embedder: self.id().to_owned(),
            dimensions: self.dimensions(),
        }
    }

    pub fn dimensions(&self) -> usize {
        match self {
            Embedder::Local(model) => model.dimensions(),
            Embedder::OpenAi(endpoint) => endpoint.dimensions(),
        }
    }

    /// One unit-length vector per text, in order, and the tokens a provider charged. Texts
    /// longer than the model takes are truncated by it, never refused.
    pub async fn embed(&self, texts: &[String]) -> Result<Embedded, EmbedError> {
        if texts.is_empty() {
            return Ok(Embedded {
                vectors: Vec::new(),
                input_tokens: 0,
            });
        }
        let (vectors, input_tokens) = match self {
            Embedder::Local(model) => (model.embed(texts).await?, 0),
            Embedder::OpenAi(endpoint) => {
                let embedded = endpoint.embed(texts).await?;
                (embedded.vectors, embedded.input_tokens)
            }
        };
        if vectors.len() != texts.len() {
            return Err(EmbedError::Unusable(format!(
                "{} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        if let Some(bad) = vectors.iter().find(|v| v.len() != self.dimensions()) {
            return Err(EmbedError::Unusable(format!(
                "a vector of {} dimensions, expected {}",
                bad.len(),
                self.dimensions()
            )));
        }
        Ok(Embedded {
            vectors: vectors.into_iter().map(normalised).collect(),
            input_tokens,
        })
    }

    /// The model's name, as usage is recorded under it.
    pub fn model(&self) -> &str {
        match self {
            Embedder::Local(_) => LocalModel::ID,
            Embedder::OpenAi(endpoint) => endpoint.model(),
        }
    }
}

/// The vector scaled to length 1, so cosine similarity is a dot product (a zero vector
/// stays zero).
pub fn normalised(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    vector
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
