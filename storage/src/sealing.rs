//! Sealing of secrets at rest (connector credentials, PKCE verifiers) with AES-256-GCM.
//!
//! A sealed value is `v1.<key id>.<nonce>.<ciphertext>` (base64url): the key id says which
//! key sealed it, so retired keys can still open old values while new ones are sealed under
//! the current key, and `taskfleet-api keys reseal` moves everything to the current key. The
//! associated data binds a value to where it belongs (the tenant and the connector): a sealed
//! value copied to another row does not open.

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const VERSION: &str = "v1";
const NONCE_BYTES: usize = 12;

/// The encryption keys of a process, from its environment. Its `Debug` shows whether each
/// is set, never a key.
#[derive(Clone, clap::Args)]
pub struct EncryptionKeys {
    /// Seals connector credentials: 32 bytes as 64 hex characters (`openssl rand -hex 32`).
    #[arg(long, env = "TASKFLEET_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// Retired keys, comma separated, still accepted for opening what they sealed.
    #[arg(
        long,
        env = "TASKFLEET_ENCRYPTION_KEYS_OLD",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub encryption_keys_old: Vec<String>,
}

impl std::fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKeys")
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "<redacted>"),
            )
            .field("encryption_keys_old", &self.encryption_keys_old.len())
            .finish()
    }
}

impl EncryptionKeys {
    pub fn sealer(&self) -> Result<Sealer, KeyError> {
        let current = self
            .encryption_key
            .as_deref()
            .filter(|key| !key.trim().is_empty())
            .ok_or(KeyError::Missing)?;
        let retired: Vec<&str> = self
            .encryption_keys_old
            .iter()
            .map(String::as_str)
            .filter(|key| !key.trim().is_empty())
            .collect();
        Sealer::from_hex(current, &retired)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "TASKFLEET_ENCRYPTION_KEY is not set: it seals connector credentials. Make one with \
         `openssl rand -hex 32` and give every API and worker process the same"
    )]
    Missing,
    #[error(
        "{0} must be 32 bytes written as 64 hex characters; make one with `openssl rand -hex 32`"
    )]
    Malformed(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("the sealed value is not in the v1 format")]
    Malformed,
    #[error(
        "the value was sealed under key {0}, which is neither TASKFLEET_ENCRYPTION_KEY nor in \
         TASKFLEET_ENCRYPTION_KEYS_OLD"
    )]
    UnknownKey(String),
    #[error("the sealed value does not open: it was altered, or belongs elsewhere")]
    Tampered,
}

#[derive(Clone)]
struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn from_hex(hex_key: &str, name: &'static str) -> Result<Key, KeyError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| KeyError::Malformed(name))?;
        if bytes.len() != 32 {
            return Err(KeyError::Malformed(name));
        }
        let digest = Sha256::new()
            .chain_update(b"taskfleet key id\0")
            .chain_update(&bytes)
            .finalize();
        Ok(Key {
            id: hex::encode(&digest[..4]),
            cipher: Aes256Gcm::new_from_slice(&bytes).expect("32 bytes make an AES-256 key"),
        })
    }
}

/// Seals with the current key; opens with it or a retired one.
#[derive(Clone)]
pub struct Sealer {
    current: Key,
    retired: Vec<Key>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("current", &self.current.id)
            .field(
                "retired",
                &self.retired.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Sealer {
    pub fn from_hex(current: &str, retired: &[&str]) -> Result<Sealer, KeyError> {
        Ok(Sealer {
            current: Key::from_hex(current, "TASKFLEET_ENCRYPTION_KEY")?,
            retired: retired
                .iter()
                .map(|key| Key::from_hex(key, "each of TASKFLEET_ENCRYPTION_KEYS_OLD"))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The id of the key new values are sealed under.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    pub fn seal(&self, plaintext: &[u8], context: &str) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM seals any message of this size");
        format!(
            "{VERSION}.{}.{}.{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(nonce),
            URL_SAFE_NO_PAD.encode(sealed)
        )
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, OpenError> {
        let mut parts = sealed.split('.');
        let (Some(VERSION), Some(key_id), Some(nonce), Some(body), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(OpenError::Malformed);
        };
        let key = std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|key| key.id == key_id)
            .ok_or_else(|| OpenError::UnknownKey(key_id.to_owned()))?;
        let nonce = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .filter(|n| n.len() == NONCE_BYTES)
            .ok_or(OpenError::Malformed)?;
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        key.cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Tampered)
    }

    /// Whether `sealed` is under the current key already.
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) == Some(self.current.id.as_str())
    }
}

/// Where a connector's credentials belong: the associated data they are sealed with.
pub fn connector_context(tenant_id: Uuid, connector_id: Uuid) -> String {
    format!("taskfleet/connector/{tenant_id}/{connector_id}")
}

/// Where a tenant's own LLM API key belongs.
pub fn llm_context(tenant_id: Uuid) -> String {
    format!("taskfleet/llm/{tenant_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn sealed_values_open_only_where_they_belong() {
        let sealer = Sealer::from_hex(KEY_A, &[]).unwrap();
        let here = connector_context(Uuid::nil(), Uuid::max());
        let sealed = sealer.seal(b"gho_token", &here);
        assert!(!sealed.contains("gho_token"));
        assert_eq!(sealer.open(&sealed, &here).unwrap(), b"gho_token");
        assert_ne!(
            sealer.seal(b"gho_token", &here),
            sealed,
            "a fresh nonce each time"
        );
        let elsewhere = connector_context(Uuid::max(), Uuid::nil());
        assert_eq!(sealer.open(&sealed, &elsewhere), Err(OpenError::Tampered));
        let mut altered = sealed.clone();
        altered.pop();
        assert!(sealer.open(&altered, &here).is_err());
        assert_eq!(sealer.open("plain", &here), Err(OpenError::Malformed));
    }

    #[test]
    fn retired_keys_open_and_only_the_current_one_seals() {
        let old = Sealer::from_hex(KEY_A, &[]).unwrap();
        let sealed = old.seal(b"secret", "c");
        let rotated = Sealer::from_hex(KEY_B, &[KEY_A]).unwrap();
        assert_eq!(rotated.open(&sealed, "c").unwrap(), b"secret");
        assert!(!rotated.is_current(&sealed));
        assert!(rotated.is_current(&rotated.seal(b"secret", "c")));
        let forgotten = Sealer::from_hex(KEY_B, &[]).unwrap();
        assert!(matches!(
            forgotten.open(&sealed, "c"),
            Err(OpenError::UnknownKey(_))
        ));
    }

    #[test]
    fn keys_are_32_bytes_of_hex() {
        assert_eq!(
            Sealer::from_hex("abcd", &[]).unwrap_err(),
            KeyError::Malformed("TASKFLEET_ENCRYPTION_KEY")
        );
        assert!(Sealer::from_hex(KEY_A, &["zz"]).is_err());
        let keys = EncryptionKeys {
            encryption_key: None,
            encryption_keys_old: vec![],
        };
        assert_eq!(keys.sealer().unwrap_err(), KeyError::Missing);
        assert!(
            KeyError::Missing
                .to_string()
                .contains("openssl rand -hex 32")
        );
    }
}
