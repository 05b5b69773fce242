//! Tenants and their API keys. A key is shown once; only its SHA-256 is stored.

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// The tenant that owns the fleet's own probe jobs (`/readyz`); housekeeping removes them.
pub const SYSTEM_TENANT: &str = "_system";

/// Every key starts with this, so a leaked one is easy to recognise in logs and scanners.
const KEY_PREFIX: &str = "tfk_";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Tenants {
    pool: PgPool,
}

fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

impl Tenants {
    pub fn new(pool: PgPool) -> Tenants {
        Tenants { pool }
    }

    /// The tenant called `name`, created if new.
    pub async fn ensure(&self, name: &str) -> sqlx::Result<Tenant> {
        let (id, name) = sqlx::query_as(
            "INSERT INTO tenants (id, name) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
             RETURNING id, name",
        )
        .bind(Uuid::now_v7())
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(Tenant { id, name })
    }

    /// Creates a new API key for the tenant called `name` (creating the tenant if new) and
    /// returns the key. It cannot be recovered later.
    pub async fn create_key(&self, name: &str) -> sqlx::Result<(Tenant, String)> {
        let tenant = self.ensure(name).await?;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4)",
        )
        .bind(Uuid::now_v7())
        .bind(tenant.id)
        .bind(hash_key(&key))
        .bind(&key[..KEY_PREFIX.len() + 8])
        .execute(&self.pool)
        .await?;
        Ok((tenant, key))
    }

    /// The tenant a key belongs to, if the key exists and is not revoked.
    pub async fn authenticate(&self, key: &str) -> sqlx::Result<Option<Tenant>> {
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT t.id, t.name FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash_key(key))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id, name)| Tenant { id, name }))
    }
}
