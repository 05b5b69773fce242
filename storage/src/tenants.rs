//! Tenants and their API keys. A key is shown once; only its SHA-256 is stored.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use taskfleet_jobs::AuditAction;
use uuid::Uuid;

use crate::audit::{Actor, AuditEntry, AuditLog};

/// The tenant that owns the fleet's own probe jobs (`/readyz`); housekeeping removes them.
/// Migration 0017's `system_tenant_id()` names it too, for the pause check.
pub const SYSTEM_TENANT: &str = "_system";

/// Every key starts with this, so a leaked one is easy to recognise in logs and scanners.
const KEY_PREFIX: &str = "tfk_";
/// How much of a key is stored in clear (`api_keys.key_prefix`) to tell keys apart.
const SHOWN_LENGTH: usize = KEY_PREFIX.len() + 8;
/// Most keys a [`KeyCache`] holds; a fleet with more looks the rest up each time.
const CACHED_KEYS: usize = 10_000;

/// What a key may see and do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Its own tenant's jobs, events and schedules: reads them, submits, cancels, changes.
    #[default]
    Tenant,
    /// Reads what a tenant key reads and changes nothing: a dashboard on a wall.
    Reader,
    /// Every tenant's, plus the fleet: workers, queue pauses.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Tenant => "tenant",
            Role::Reader => "read",
            Role::Operator => "operator",
        }
    }

    fn from_column(role: &str) -> Role {
        match role {
            "operator" => Role::Operator,
            "read" => Role::Reader,
            _ => Role::Tenant,
        }
    }
}

/// Whose rows a read or change may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Tenant(Uuid),
    /// Every tenant (operator keys).
    All,
}

impl Scope {
    /// The tenant to bind where a statement selects a scope's rows with
    /// `($1::uuid IS NULL OR tenant_id = $1)`: none for every tenant. Postgres plans such a
    /// statement for the value bound (`Db`'s connections never use generic plans), so a
    /// tenant's query still goes through its tenant index.
    pub fn tenant_id(self) -> Option<Uuid> {
        match self {
            Scope::Tenant(id) => Some(id),
            Scope::All => None,
        }
    }

    /// Whether a row of `tenant_id` (none for fleet rows) is in this scope.
    pub fn covers(self, tenant_id: Option<Uuid>) -> bool {
        match self {
            Scope::Tenant(id) => tenant_id == Some(id),
            Scope::All => true,
        }
    }
}

/// A tenant as seen through the key that authenticated a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// The API key that authenticated, when one did.
    pub key_id: Option<Uuid>,
    /// That key's stored first characters (`api_keys.key_prefix`): it acts under them in the
    /// audit log.
    pub key_prefix: Option<String>,
    /// The `sub` of the identity provider's token that authenticated, when one did: the
    /// person or service it acts for in the audit log.
    pub token_subject: Option<String>,
}

impl Tenant {
    /// What this key may read: its own tenant, or everything for an operator.
    pub fn scope(&self) -> Scope {
        match self.role {
            Role::Tenant | Role::Reader => Scope::Tenant(self.id),
            Role::Operator => Scope::All,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tenants {
    pool: PgPool,
    keys: Option<Arc<KeyCache>>,
}

/// A key as `keys list` and the audit log show it: its stored prefix and an ellipsis.
pub fn shown_key(prefix: &str) -> String {
    format!("{prefix}…")
}

fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Keys that authenticated lately, so a busy API does not look the same key up in Postgres
/// for every request (ADR 0007). The price: a key
/// revoked meanwhile keeps working on each API process until its entry is `ttl` old.
#[derive(Debug)]
struct KeyCache {
    ttl: Duration,
    entries: Mutex<CachedKeys>,
}

#[derive(Debug, Default)]
struct CachedKeys {
    /// By the key's SHA-256: the tenant it names and when the lookup that found it began.
    by_hash: HashMap<Vec<u8>, (Tenant, Instant)>,
    /// When a full cache last dropped its expired entries: at most once a `ttl`, so a cache
    /// full of live keys is not scanned at every miss.
    swept_at: Option<Instant>,
}

impl KeyCache {
    fn get(&self, hash: &[u8]) -> Option<Tenant> {
        let entries = self.entries.lock().expect("key cache lock");
        let (tenant, at) = entries.by_hash.get(hash)?;
        (at.elapsed() < self.ttl).then(|| tenant.clone())
    }

    /// Remembers `tenant` for the key `hash`, as of `looked_up_at` (before the lookup, so no
    /// entry outlives its lookup by more than `ttl`).
    fn put(&self, hash: Vec<u8>, tenant: Tenant, looked_up_at: Instant) {
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.by_hash.len() >= CACHED_KEYS
            && entries.swept_at.is_none_or(|at| at.elapsed() >= self.ttl)
        {
            entries.by_hash.retain(|_, (_, at)| at.elapsed() < self.ttl);
            entries.swept_at = Some(Instant::now());
        }
        if entries.by_hash.len() < CACHED_KEYS {
            entries.by_hash.insert(hash, (tenant, looked_up_at));
        }
    }
}

/// Why [`Tenants::revoke_key`] revoked nothing.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Holds the key's first 12 characters, never the whole key.
    #[error("no unrevoked API key matches `{0}…`")]
    NotFound(String),
    #[error("{count} API keys start with `{prefix}`; give the whole key")]
    Ambiguous { prefix: String, count: i64 },
}

impl Tenants {
    pub fn new(pool: PgPool) -> Tenants {
        Tenants { pool, keys: None }
    }

    /// Like [`Tenants::new`], remembering each key that authenticated for `ttl` (none when
    /// zero): see `KeyCache`.
    pub fn with_key_cache(pool: PgPool, ttl: Duration) -> Tenants {
        let keys = (!ttl.is_zero()).then(|| {
            Arc::new(KeyCache {
                ttl,
                entries: Mutex::default(),
            })
        });
        Tenants { pool, keys }
    }

    /// The tenant called `name`, created if new.
    pub async fn ensure(&self, name: &str) -> sqlx::Result<Tenant> {
        let row = sqlx::query!(
            "INSERT INTO tenants (id, name) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
             RETURNING id, name",
            Uuid::now_v7(),
            name,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Tenant {
            id: row.id,
            name: row.name,
            role: Role::Tenant,
            key_id: None,
            key_prefix: None,
            token_subject: None,
        })
    }

    /// The tenant called `name`, if it exists.
    pub async fn find(&self, name: &str) -> sqlx::Result<Option<Uuid>> {
        sqlx::query_scalar!("SELECT id FROM tenants WHERE name = $1", name)
            .fetch_optional(&self.pool)
            .await
    }

    /// Creates a new API key with `role` for the tenant called `name` (creating the tenant
    /// if new), valid for `lifetime` when given, and returns the key. It cannot be recovered
    /// later. The audit log records `by` creating it, in the same transaction.
    pub async fn create_key(
        &self,
        name: &str,
        role: Role,
        lifetime: Option<Duration>,
        by: &Actor,
    ) -> sqlx::Result<(Tenant, String)> {
        let key_id = Uuid::now_v7();
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
        let prefix = &key[..SHOWN_LENGTH];
        let tenant = Tenant {
            role,
            key_id: Some(key_id),
            key_prefix: Some(prefix.to_owned()),
            token_subject: None,
            ..self.ensure(name).await?
        };
        let lifetime_secs = lifetime.map(|lifetime| lifetime.as_secs_f64());
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "INSERT INTO api_keys (id, tenant_id, key_hash, key_prefix, role, expires_at)
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
            key_id,
            tenant.id,
            hash_key(&key),
            prefix,
            role.as_str(),
            lifetime_secs,
        )
        .execute(&mut *tx)
        .await?;
        let created = AuditEntry::new(AuditAction::KeyCreated, Some(tenant.id), shown_key(prefix))
            .with_detail(json!({
                "role": role.as_str(),
                "lifetime_secs": lifetime.map(|lifetime| lifetime.as_secs()),
            }));
        AuditLog::record_in(&mut tx, by, &created).await?;
        tx.commit().await?;
        Ok((tenant, key))
    }

    /// The tenant a key belongs to, if the key exists and is neither revoked nor expired (or,
    /// with a key cache, was not when it was last looked up). Marks the key used, to the
    /// minute.
    pub async fn authenticate(&self, key: &str) -> sqlx::Result<Option<Tenant>> {
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let hash = hash_key(key);
        if let Some(tenant) = self.keys.as_ref().and_then(|keys| keys.get(&hash)) {
            return Ok(Some(tenant));
        }
        let looked_up_at = Instant::now();
        let row = sqlx::query!(
            r#"SELECT t.id AS tenant_id, t.name, k.role, k.id AS key_id, k.key_prefix,
                      k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute'
                        AS "stale_use!"
               FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
               WHERE k.key_hash = $1 AND k.revoked_at IS NULL
                 AND (k.expires_at IS NULL OR k.expires_at > now())"#,
            hash,
        )
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row.as_ref().filter(|row| row.stale_use) {
            // Once a minute at most, so a busy key does not cost a write a request.
            sqlx::query!(
                "UPDATE api_keys SET last_used_at = now() WHERE id = $1",
                row.key_id
            )
            .execute(&self.pool)
            .await?;
        }
        let tenant = row.map(|row| Tenant {
            id: row.tenant_id,
            name: row.name,
            role: Role::from_column(&row.role),
            key_id: Some(row.key_id),
            key_prefix: Some(row.key_prefix),
            token_subject: None,
        });
        if let (Some(keys), Some(tenant)) = (&self.keys, &tenant) {
            keys.put(hash, tenant.clone(), looked_up_at);
        }
        Ok(tenant)
    }

    /// Revokes the API key `key` names: the whole key, or its first 12 characters (what
    /// `api_keys.key_prefix` shows) when no other unrevoked key starts with them. Returns
    /// the key's shown prefix and its tenant's name. The audit log records `by` revoking it,
    /// in the same transaction.
    pub async fn revoke_key(&self, key: &str, by: &Actor) -> Result<(String, String), RevokeError> {
        let mut tx = self.pool.begin().await?;
        // A shown prefix matches by `key_prefix`, a whole key by its hash.
        let prefix = (key.len() == SHOWN_LENGTH).then_some(key);
        let ids: Vec<Uuid> = sqlx::query_scalar!(
            "SELECT id FROM api_keys
             WHERE (key_prefix = $1 OR key_hash = $2) AND revoked_at IS NULL FOR UPDATE",
            prefix,
            hash_key(key),
        )
        .fetch_all(&mut *tx)
        .await?;
        let shown = key.get(..SHOWN_LENGTH).unwrap_or(key).to_owned();
        let id = match ids.as_slice() {
            [id] => *id,
            [] => return Err(RevokeError::NotFound(shown)),
            _ => {
                return Err(RevokeError::Ambiguous {
                    prefix: shown,
                    count: ids.len() as i64,
                });
            }
        };
        let revoked = sqlx::query!(
            "UPDATE api_keys k SET revoked_at = now() FROM tenants t
             WHERE k.id = $1 AND t.id = k.tenant_id
             RETURNING k.key_prefix, t.id, t.name",
            id,
        )
        .fetch_one(&mut *tx)
        .await?;
        let entry = AuditEntry::new(
            AuditAction::KeyRevoked,
            Some(revoked.id),
            shown_key(&revoked.key_prefix),
        );
        AuditLog::record_in(&mut tx, by, &entry).await?;
        tx.commit().await?;
        Ok((revoked.key_prefix, revoked.name))
    }
}

/// What `taskfleet-api keys list` shows of a key: never the key itself.
#[derive(Debug, Clone)]
pub struct KeyListing {
    pub prefix: String,
    pub tenant: String,
    pub role: Role,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Tenants {
    /// Every key, or a tenant's, newest first.
    pub async fn list_keys(&self, tenant: Option<&str>) -> sqlx::Result<Vec<KeyListing>> {
        let rows = sqlx::query!(
            "SELECT k.key_prefix, t.name, k.role, k.created_at, k.last_used_at, k.expires_at,
                    k.revoked_at
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE $1::text IS NULL OR t.name = $1
             ORDER BY k.created_at DESC, k.id DESC",
            tenant,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| KeyListing {
                prefix: row.key_prefix,
                tenant: row.name,
                role: Role::from_column(&row.role),
                created_at: row.created_at,
                last_used_at: row.last_used_at,
                expires_at: row.expires_at,
                revoked_at: row.revoked_at,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl: Duration) -> KeyCache {
        KeyCache {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn tenant() -> Tenant {
        Tenant {
            id: Uuid::now_v7(),
            name: "acme".into(),
            role: Role::Tenant,
            key_id: Some(Uuid::now_v7()),
            key_prefix: Some("tfk_0123abcd".into()),
            token_subject: None,
        }
    }

    #[test]
    fn a_remembered_key_is_forgotten_ttl_after_its_lookup_began() {
        let keys = cache(Duration::from_millis(50));
        let acme = tenant();
        keys.put(hash_key("tfk_a"), acme.clone(), Instant::now());
        assert_eq!(keys.get(&hash_key("tfk_a")), Some(acme.clone()));
        assert_eq!(keys.get(&hash_key("tfk_b")), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(keys.get(&hash_key("tfk_a")), None);
        // A lookup that began a ttl ago is stale as soon as it ends.
        let began = Instant::now() - Duration::from_millis(50);
        keys.put(hash_key("tfk_a"), acme, began);
        assert_eq!(keys.get(&hash_key("tfk_a")), None);
    }

    fn fill(keys: &KeyCache) {
        for i in 0..CACHED_KEYS {
            keys.put(hash_key(&format!("tfk_{i}")), tenant(), Instant::now());
        }
    }

    #[test]
    fn a_full_cache_makes_room_only_from_expired_entries_once_a_ttl() {
        let keys = cache(Duration::from_secs(60));
        fill(&keys);
        keys.put(hash_key("tfk_late"), tenant(), Instant::now());
        assert_eq!(keys.get(&hash_key("tfk_late")), None, "looked up each time");
        assert!(keys.get(&hash_key("tfk_0")).is_some());
        let swept_at = keys.entries.lock().unwrap().swept_at;
        assert!(swept_at.is_some());
        keys.put(hash_key("tfk_later"), tenant(), Instant::now());
        assert_eq!(
            keys.entries.lock().unwrap().swept_at,
            swept_at,
            "no second sweep within the ttl"
        );

        let keys = cache(Duration::from_millis(20));
        fill(&keys);
        std::thread::sleep(Duration::from_millis(30));
        keys.put(hash_key("tfk_late"), tenant(), Instant::now());
        assert!(keys.get(&hash_key("tfk_late")).is_some());
        assert_eq!(keys.entries.lock().unwrap().by_hash.len(), 1);
    }
}
