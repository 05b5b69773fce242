//! The local model against the published model's behaviour: sentence-transformers'
//! documentation lists these cosine similarities for all-MiniLM-L6-v2, computed from the
//! vectors of the upstream weights. Our candle pipeline (tokenizer, BERT, masked mean,
//! normalisation) must give the same numbers, whichever batch the texts share.

use std::path::PathBuf;

use taskfleet_agents::{EmbedError, Embedder, LocalModel, cosine};

fn model_dir() -> PathBuf {
    std::env::var_os("TASKFLEET_EMBED_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../var/models/all-MiniLM-L6-v2")
        })
}

fn model() -> Embedder {
    let dir = model_dir();
    Embedder::Local(
        LocalModel::load(&dir)
            .unwrap_or_else(|err| panic!("{err}: run `make model` first ({})", dir.display())),
    )
}

fn texts(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

#[tokio::test]
async fn similarities_match_the_published_ones() {
    let model = model();
    let sentences = texts(&[
        "The cat sits outside",
        "A man is playing guitar",
        "I love pasta",
        "The new movie is awesome",
        "The cat plays in the garden",
        "A woman watches TV",
        "The new movie is so great",
        "Do you like pizza?",
    ]);
    let embedded = model.embed(&sentences).await.unwrap();
    assert_eq!(embedded.input_tokens, 0, "the local model charges nothing");
    let vectors = embedded.vectors;
    assert_eq!(vectors.len(), 8);
    let published = [
        (3, 6, 0.8939),
        (0, 4, 0.6788),
        (2, 7, 0.5096),
        (2, 6, 0.2560),
        (2, 3, 0.2440),
        (1, 4, 0.2105),
        (3, 7, 0.1969),
        (6, 7, 0.1692),
        (0, 5, 0.1310),
        (4, 7, 0.0900),
    ];
    for (a, b, expected) in published {
        let got = cosine(&vectors[a], &vectors[b]);
        assert!(
            (got - expected).abs() < 0.002,
            "{} / {}: {got:.4}, published {expected:.4}",
            sentences[a],
            sentences[b]
        );
    }
    for vector in &vectors {
        assert_eq!(vector.len(), 384);
        let norm: f32 = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
}

#[tokio::test]
async fn a_text_embeds_the_same_alone_and_in_a_padded_batch() {
    let model = model();
    let alone = model
        .embed(&texts(&["Fix the login bug"]))
        .await
        .unwrap()
        .vectors;
    let long = "Production is down since the deploy; customers cannot log in. ".repeat(4);
    let batch = model
        .embed(&texts(&[
            "Fix the login bug",
            &long,
            "Renew the TLS certificates",
        ]))
        .await
        .unwrap()
        .vectors;
    assert!(cosine(&alone[0], &batch[0]) > 0.9999);
}

#[tokio::test]
async fn a_text_over_the_models_limit_is_truncated_not_refused() {
    let model = model();
    let huge = "deploy the release candidate to staging ".repeat(2_000);
    let vectors = model
        .embed(&texts(&[&huge, "short"]))
        .await
        .unwrap()
        .vectors;
    assert_eq!(vectors[0].len(), 384);
}

#[test]
fn a_damaged_model_file_is_refused_with_its_checksum() {
    let dir = std::env::temp_dir().join(format!("tf-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(model_dir().join(file), dir.join(file)).unwrap();
    }
    std::fs::write(dir.join("model.safetensors"), b"not the weights").unwrap();
    let err = LocalModel::load(&dir).err().expect("refused");
    assert!(
        matches!(&err, EmbedError::Model(m) if m.contains("SHA-256") && m.contains("all-MiniLM-L6-v2")),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
