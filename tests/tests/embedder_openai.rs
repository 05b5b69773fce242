//! The OpenAI-compatible embedder against the fake OpenAI: batches of at most 256 texts in
//! order, and each kind of refusal sorted into the `EmbedError` the embed jobs act on.

use std::time::Duration;

use taskfleet_agents::{EmbedError, OpenAiEmbedder};
use taskfleet_tests::{
    fake_providers::{FakeProviders, FaultRule, OPENAI_API_KEY},
    free_port,
};

const MODEL: &str = "text-embedding-3-small";
/// Not the fake's default width (256): a vector this wide shows rig sent `dimensions`.
const DIMENSIONS: usize = 384;
const PATH: &str = "/openai/v1/embeddings";

fn embedder(fake: &FakeProviders, key: &str) -> OpenAiEmbedder {
    OpenAiEmbedder::new(&fake.openai_base_url(), MODEL, key, DIMENSIONS).unwrap()
}

fn texts(n: usize) -> Vec<String> {
    // Each text twice, 150 apart: once in each request for the last ones.
    (0..n)
        .map(|i| {
            format!(
                "Task {} of the {} project",
                i % 150,
                ["login", "billing"][i % 2]
            )
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn three_hundred_texts_in_two_requests_come_back_in_order() {
    let fake = FakeProviders::start().await;
    let embedder = embedder(&fake, OPENAI_API_KEY);
    assert_eq!(
        embedder.id(),
        format!("openai:{MODEL}:{DIMENSIONS}@{}", fake.openai_base_url())
    );
    let texts = texts(300);

    let embedded = embedder.embed(&texts).await.unwrap();
    let vectors = embedded.vectors;

    assert_eq!(fake.requests(PATH), 2, "256 texts, then 44");
    // The tokens both answers reported.
    assert!(embedded.input_tokens >= 300, "{}", embedded.input_tokens);
    assert_eq!(vectors.len(), 300);
    for vector in &vectors {
        assert_eq!(vector.len(), DIMENSIONS);
        assert!((cosine(vector, vector) - 1.0).abs() < 1e-4, "unit length");
    }
    // The same text gives the same vector, within a request and across the two.
    assert_eq!(vectors[0], vectors[150]);
    assert_eq!(vectors[120], vectors[270]);
    assert_ne!(vectors[0], vectors[1]);
    // Input order: each vector is the one its own text gets alone.
    let alone = embedder.embed(&texts[299..]).await.unwrap().vectors;
    assert_eq!(alone[0], vectors[299]);
    // Texts sharing words point the same way.
    assert!(cosine(&vectors[0], &vectors[2]) > cosine(&vectors[0], &vectors[1]));

    let nothing = embedder.embed(&[]).await.unwrap();
    assert_eq!((nothing.vectors.len(), nothing.input_tokens), (0, 0));
    assert_eq!(fake.requests(PATH), 3, "nothing to embed sends nothing");
}

#[tokio::test]
async fn a_wrong_key_is_rejected() {
    let fake = FakeProviders::start().await;
    let wrong = embedder(&fake, "sk-wrong-key-0001");
    assert_eq!(wrong.embed(&texts(3)).await, Err(EmbedError::Rejected));
    let none = embedder(&fake, "");
    assert_eq!(none.embed(&texts(3)).await, Err(EmbedError::Rejected));
    let debug = format!("{wrong:?}");
    assert!(!debug.contains("sk-wrong-key-0001"), "{debug}");
}

#[tokio::test]
async fn a_rate_limit_carries_the_providers_delay() {
    let fake = FakeProviders::start().await;
    fake.fail_next(FaultRule::openai_rate_limited(PATH, 7, 1));
    let embedder = embedder(&fake, OPENAI_API_KEY);

    let error = embedder.embed(&texts(3)).await.unwrap_err();

    let EmbedError::RateLimited {
        retry_after,
        message,
    } = &error
    else {
        panic!("not a rate limit: {error:?}");
    };
    assert_eq!(*retry_after, Some(Duration::from_secs(7)));
    assert!(message.contains("Rate limit reached"), "{message}");
    assert!(error.retryable());
    // The rule is used up: the next call goes through.
    assert_eq!(embedder.embed(&texts(3)).await.unwrap().vectors.len(), 3);
}

#[tokio::test]
async fn a_server_error_or_no_server_is_unavailable() {
    let fake = FakeProviders::start().await;
    fake.fail_next(FaultRule::openai_server_error(PATH, 500, 1));
    let embedder = embedder(&fake, OPENAI_API_KEY);

    let error = embedder.embed(&texts(3)).await.unwrap_err();
    assert!(
        matches!(&error, EmbedError::Unavailable(message) if message.contains("The server had an error")),
        "{error:?}"
    );
    assert!(error.retryable());

    let nowhere = OpenAiEmbedder::new(
        &format!("http://127.0.0.1:{}/openai/v1", free_port()),
        MODEL,
        OPENAI_API_KEY,
        DIMENSIONS,
    )
    .unwrap();
    let error = nowhere.embed(&texts(1)).await.unwrap_err();
    assert!(matches!(error, EmbedError::Unavailable(_)), "{error:?}");
}

#[tokio::test]
async fn a_refused_request_is_unusable_with_the_providers_words() {
    let fake = FakeProviders::start().await;
    // text-embedding-ada-002 takes no `dimensions`, which rig knows and does not send; the
    // fake then answers at its default width, which is not the one asked for.
    let ada = OpenAiEmbedder::new(
        &fake.openai_base_url(),
        "text-embedding-ada-002",
        OPENAI_API_KEY,
        1536,
    )
    .unwrap();
    let error = ada.embed(&texts(1)).await.unwrap_err();
    assert!(matches!(error, EmbedError::Unusable(_)), "{error:?}");

    // An empty text is one OpenAI refuses.
    let embedder = embedder(&fake, OPENAI_API_KEY);
    let error = embedder
        .embed(&["a text".to_owned(), String::new()])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, EmbedError::Unusable(message) if message.starts_with("HTTP 400: '$.input' is invalid")),
        "{error:?}"
    );
    assert!(!error.retryable());
}
