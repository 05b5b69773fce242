//! Tenants' own rate limits in one API process. An operator sets them
//! (`PUT /v1/tenants/{tenant}/rate-limits`); the replica that served the change applies it at
//! once, and every replica reads them all from Postgres every [`REFRESH_EVERY`].
//!
//! The limiter runs before authentication, so it knows a key only by its hash. Authentication
//! tells it which tenant the key is ([`RateLimits::learn`]); from then on the key counts
//! against its tenant's limit of each class the tenant has one for: a limiter per tenant and
//! class, keyed by the key's hash as the fleet's are. A key's first request (before it has
//! authenticated here, or after a quiet spell made it forgotten) counts against the fleet's
//! default, because which tenant the key is becomes known only once the request is admitted.

use std::{collections::HashMap, hash::BuildHasher, sync::Arc, time::Duration};

use taskfleet_storage::{RateLimitOverride, TenantOverride, TenantRateLimits};
use uuid::Uuid;

use super::{Class, Gate, Limit, PerClass, RateLimits};

/// How often each API process reads every tenant's limits, for changes other replicas stored.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// A tenant's own limits: `None` for a class left to the fleet's default.
pub type TenantLimits = PerClass<Option<Limit>>;

impl TenantLimits {
    /// Reads limits as stored, with the parser of `TASKFLEET_RATE_LIMIT_*`; an error names
    /// the class whose text is not a limit.
    pub fn parse(own: &RateLimitOverride) -> Result<TenantLimits, String> {
        let parse = |class: Class, text: &Option<String>| {
            text.as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|err| format!("`{}`: {err}", class.name()))
        };
        Ok(PerClass {
            submit: parse(Class::Submit, &own.submit)?,
            read: parse(Class::Read, &own.read)?,
            stream: parse(Class::Stream, &own.stream)?,
        })
    }

    /// As stored: each limit written out in full (`100/s` becomes `100/s:200`).
    pub fn stored(&self) -> RateLimitOverride {
        let text = |limit: &Option<Limit>| limit.as_ref().map(Limit::to_string);
        RateLimitOverride {
            submit: text(&self.submit),
            read: text(&self.read),
            stream: text(&self.stream),
        }
    }
}

/// Which tenant each key is, by its hash, as authentication told. Only keys that
/// authenticated get here, so made-up keys cost nothing; a key that has not authenticated
/// through a whole sweep is forgotten at the next (the two generations).
#[derive(Default)]
pub(super) struct KnownKeys {
    recent: HashMap<u64, Uuid>,
    older: HashMap<u64, Uuid>,
}

impl KnownKeys {
    pub(super) fn tenant(&self, key: u64) -> Option<Uuid> {
        self.recent
            .get(&key)
            .or_else(|| self.older.get(&key))
            .copied()
    }

    pub(super) fn sweep(&mut self) {
        self.older = std::mem::take(&mut self.recent);
    }
}

/// The gates of every tenant with limits of its own.
#[derive(Default)]
pub(super) struct TenantGates {
    /// A class left to the fleet's default has none.
    gates: HashMap<Uuid, PerClass<Option<Gate>>>,
    /// How many changes this process applied: a refresh that read the table before one of
    /// them does not undo it.
    applied: u64,
}

impl TenantGates {
    pub(super) fn gate(&self, tenant: Uuid, class: Class) -> Option<&Gate> {
        self.gates.get(&tenant)?.get(class).as_ref()
    }

    /// Gives the tenant these limits. A class whose limit is unchanged keeps its gate, and
    /// with it what each key has used: a refresh must not hand every key a fresh burst.
    fn set(&mut self, tenant: Uuid, limits: TenantLimits) {
        let mut held = self.gates.remove(&tenant);
        let gates = PerClass::from_fn(|class| {
            let limit = limits.get(class).clone()?;
            let gate = held.as_mut().and_then(|held| held.get_mut(class).take());
            Some(match gate {
                Some(gate) if gate.limit == limit => gate,
                _ => Gate::new(limit),
            })
        });
        if gates.iter().any(Option::is_some) {
            self.gates.insert(tenant, gates);
        }
    }

    /// Makes these every tenant's limits, as the table holds them.
    fn replace(&mut self, fresh: HashMap<Uuid, TenantLimits>) {
        self.gates.retain(|tenant, _| fresh.contains_key(tenant));
        for (tenant, limits) in fresh {
            self.set(tenant, limits);
        }
    }

    pub(super) fn forget_quiet_keys(&self) {
        for gate in self.gates.values().flat_map(PerClass::iter).flatten() {
            gate.forget_quiet_keys();
        }
    }
}

impl RateLimits {
    /// Notes that `token` authenticated as `tenant`: its next requests count against the
    /// tenant's own limits.
    pub fn learn(&self, token: &str, tenant: Uuid) {
        let key = self.hasher.hash_one(token);
        let keys = self.keys.read().expect("known keys lock");
        if keys.recent.get(&key) == Some(&tenant) {
            return;
        }
        drop(keys);
        self.keys
            .write()
            .expect("known keys lock")
            .recent
            .insert(key, tenant);
    }

    /// Applies limits this process has just stored, without waiting for the next refresh.
    pub fn apply(&self, tenant: Uuid, limits: TenantLimits) {
        let mut tenants = self.tenants.write().expect("tenant limits lock");
        tenants.set(tenant, limits);
        tenants.applied += 1;
    }

    /// Reads every tenant's limits now and every [`REFRESH_EVERY`]; while Postgres cannot
    /// be read, the limits held stay.
    pub fn follow_overrides(self: Arc<Self>, store: TenantRateLimits) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(REFRESH_EVERY);
            loop {
                every.tick().await;
                let applied = self.tenants.read().expect("tenant limits lock").applied;
                match store.all().await {
                    Ok(rows) => self.refresh(applied, rows),
                    Err(err) => tracing::warn!(%err, "could not read tenants' rate limits"),
                }
            }
        });
    }

    /// Holds `rows` as every tenant's limits, unless this process applied a change since
    /// `applied` (the rows may predate it; the next refresh has it).
    fn refresh(&self, applied: u64, rows: Vec<TenantOverride>) {
        let mut fresh = HashMap::new();
        for row in rows {
            match TenantLimits::parse(&row.limits) {
                Ok(limits) => {
                    fresh.insert(row.tenant_id, limits);
                }
                Err(err) => tracing::warn!(
                    tenant = %row.tenant_id,
                    %err,
                    "a tenant's stored rate limit is not a limit; the fleet's apply"
                ),
            }
        }
        let mut tenants = self.tenants.write().expect("tenant limits lock");
        if tenants.applied == applied {
            tenants.replace(fresh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(submit: &str) -> TenantLimits {
        TenantLimits {
            submit: Some(submit.parse().unwrap()),
            ..Default::default()
        }
    }

    fn remaining(gates: &TenantGates, tenant: Uuid, key: u64) -> u32 {
        let decision = gates.gate(tenant, Class::Submit).unwrap().check(key);
        decision.unwrap().unwrap().remaining_burst_capacity()
    }

    #[test]
    fn a_refresh_keeps_what_keys_used_of_an_unchanged_limit() {
        let (tenant, key) = (Uuid::new_v4(), 7);
        let mut gates = TenantGates::default();
        gates.set(tenant, limits("1/m:5"));
        assert_eq!(remaining(&gates, tenant, key), 4);
        gates.replace(HashMap::from([(tenant, limits("1/m:5"))]));
        assert_eq!(remaining(&gates, tenant, key), 3);
        gates.replace(HashMap::from([(tenant, limits("1/m:9"))]));
        assert_eq!(
            remaining(&gates, tenant, key),
            8,
            "a new limit starts afresh"
        );
        gates.replace(HashMap::new());
        assert!(gates.gate(tenant, Class::Submit).is_none());
    }

    #[test]
    fn a_key_counts_against_its_tenants_limit_once_it_authenticated() {
        let off = || "off".parse::<Limit>().unwrap();
        let limits_here = RateLimits::new(&super::super::RateLimitArgs {
            rate_limit_submit: off(),
            rate_limit_read: off(),
            rate_limit_stream: off(),
        });
        let (tenant, key) = (Uuid::new_v4(), "tfk_acme");
        let hash = limits_here.hasher.hash_one(key);
        let before_the_change = limits_here.tenants.read().unwrap().applied;
        limits_here.apply(tenant, limits("1/m:5"));
        assert!(
            limits_here.check(Class::Submit, hash).is_none(),
            "not known yet: the fleet's limit (off)"
        );
        limits_here.learn(key, tenant);
        let decision = limits_here.check(Class::Submit, hash).unwrap().unwrap();
        assert_eq!(decision.quota().burst_size().get(), 5);
        assert!(limits_here.check(Class::Read, hash).is_none());

        // A refresh that read the table before the change leaves it; the next one rules.
        limits_here.refresh(before_the_change, Vec::new());
        assert!(limits_here.check(Class::Submit, hash).is_some());
        let now = limits_here.tenants.read().unwrap().applied;
        limits_here.refresh(now, Vec::new());
        assert!(limits_here.check(Class::Submit, hash).is_none());
    }

    #[test]
    fn a_tenant_back_on_the_defaults_has_no_gates() {
        let tenant = Uuid::new_v4();
        let mut gates = TenantGates::default();
        gates.set(tenant, limits("off"));
        assert!(
            gates
                .gate(tenant, Class::Submit)
                .unwrap()
                .check(1)
                .is_none()
        );
        gates.set(tenant, TenantLimits::default());
        assert!(gates.gates.is_empty());
    }

    #[test]
    fn limits_name_the_class_whose_text_is_not_a_limit() {
        let own = RateLimitOverride {
            read: Some("lots".to_owned()),
            ..Default::default()
        };
        let err = TenantLimits::parse(&own).unwrap_err();
        assert!(err.starts_with("`read`: `lots` is not a limit"), "{err}");
        let own = RateLimitOverride {
            submit: Some("100/s".to_owned()),
            ..Default::default()
        };
        let stored = TenantLimits::parse(&own).unwrap().stored();
        assert_eq!(stored.submit.as_deref(), Some("100/s:200"));
        assert_eq!(stored.read, None);
    }
}
