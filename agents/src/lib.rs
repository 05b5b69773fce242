//! The work of the embed and agent queues: embedders (a local sentence model, or an
//! OpenAI-compatible endpoint through rig-core), the lancedb vector store, the prioritiser
//! and the chat agent. Only the worker links this crate: the API stays small and quick to build.

pub mod chat_agent;
pub mod embedder;
pub mod formula;
pub mod llm;
pub mod llm_review;
pub mod local_model;
pub mod openai_embedder;
pub mod settings;
pub mod vector_store;

pub use chat_agent::{
    ChatError, ChatHost, ChatReply, ChatRequest, PastMessage, TaskLine, ToolCallRecord,
};
pub use embedder::{EmbedError, Embedded, Embedder, cosine, normalised};
pub use formula::{Candidate, Ranked, Scores, Weights};
pub use llm::{BudgetRefusal, LlmError, LlmModel, Reach, TokenBudget, TokenUsage};
pub use llm_review::{Pick, Review, ReviewCandidate, ReviewError, Reviewer};
pub use local_model::LocalModel;
pub use openai_embedder::OpenAiEmbedder;
pub use settings::{AgentSettings, Agents, EmbedderKind};
pub use vector_store::{Neighbour, Space, StoreError, VectorStore};
