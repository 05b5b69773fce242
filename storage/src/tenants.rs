//! Tenants and their API keys. A key is shown once; only its SHA-256 is stored.

use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// The tenant that owns the fleet's own probe jobs (`/readyz`); housekeeping removes them.
pub const SYSTEM_TENANT: &str = "_system";

/// Every key starts with this, so a leaked one is easy to recognise in logs and scanners.
const KEY_PREFIX: &str = "tfk_";

/// What a key may see and do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Its own tenant's jobs, events and schedules.
    #[default]
    Tenant,
    /// Every tenant's, plus the fleet: workers, queue pauses.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Tenant => "tenant",
            Role::Operator => "operator",
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
    /// The condition selecting this scope's rows, with the tenant bound as `param`
    /// ([`Scope::tenant_id`]). Each scope gets its own statement, so Postgres plans a
    /// tenant's query with its tenant index rather than a generic plan for both.
    pub fn condition(self, param: &str) -> String {
        match self {
            Scope::Tenant(_) => format!("tenant_id = {param}"),
            Scope::All => format!("{param}::uuid IS NULL"),
        }
    }

    /// The tenant to bind for [`Scope::condition`].
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
}

impl Tenant {
    /// What this key may read: its own tenant, or everything for an operator.
    pub fn scope(&self) -> Scope {
        match self.role {
            Role::Tenant => Scope::Tenant(self.id),
            Role::Operator => Scope::All,
        }
    }
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
        Ok(Tenant {
            id,
            name,
            role: Role::Tenant,
        })
    }

    /// The tenant called `name`, if it exists.
    pub async fn find(&self, name: &str) -> sqlx::Result<Option<Uuid>> {
        sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    /// Creates a new API key with `role` for the tenant called `name` (creating the tenant
    /// if new) and returns the key. It cannot be recovered later.
    pub async fn create_key(&self, name: &str, role: Role) -> sqlx::Result<(Tenant, String)> {
        let tenant = Tenant {
            role,
            ..self.ensure(name).await?
        };
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, key_hash, key_prefix, role)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(Uuid::now_v7())
        .bind(tenant.id)
        .bind(hash_key(&key))
        .bind(&key[..KEY_PREFIX.len() + 8])
        .bind(role.as_str())
        .execute(&self.pool)
        .await?;
        Ok((tenant, key))
    }

    /// The tenant a key belongs to, if the key exists and is not revoked.
    pub async fn authenticate(&self, key: &str) -> sqlx::Result<Option<Tenant>> {
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let row: Option<(Uuid, String, String)> = sqlx::query_as(
            "SELECT t.id, t.name, k.role FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash_key(key))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id, name, role)| Tenant {
            id,
            name,
            role: if role == "operator" {
                Role::Operator
            } else {
                Role::Tenant
            },
        }))
    }
}
