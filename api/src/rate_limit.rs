//! How fast one API key may call, per class of route: `submit` (anything that is not a read:
//! jobs, batches, chats, cancels, schedules), `read` (GETs) and `stream` (opening an SSE
//! stream). Each class has a GCRA quota (governor): a rate and a burst. Every answer of a
//! limited route carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; a
//! request past the quota is a 429 with `Retry-After`, before it costs a body read, a key
//! lookup or a query. Limits live in each API process: with several replicas behind a
//! balancer, a key may make the rate at each. An operator may give a tenant limits of its own
//! (`tenants`).

mod tenants;

pub use tenants::TenantLimits;

use std::{
    fmt,
    hash::{BuildHasher, RandomState},
    num::NonZeroU32,
    str::FromStr,
    sync::{Arc, RwLock},
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::{StateInformationMiddleware, StateSnapshot},
};
use poem::{Endpoint, IntoResponse, Request, Response, http::HeaderValue, http::Method};

use crate::error::ApiError;

/// How often keys not seen for a while are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, clap::Args)]
pub struct RateLimitArgs {
    /// Submissions and changes a key may make: `RATE/s` (or `/m`, `/h`), optionally
    /// `:BURST` (default twice the rate per second, at least 1), or `off`.
    #[arg(long, env = "TASKFLEET_RATE_LIMIT_SUBMIT", default_value = "100/s:200")]
    pub rate_limit_submit: Limit,
    /// Reads a key may make, as for submissions.
    #[arg(long, env = "TASKFLEET_RATE_LIMIT_READ", default_value = "200/s:400")]
    pub rate_limit_read: Limit,
    /// SSE streams a key may open, as for submissions (how many may be open at once is
    /// `TASKFLEET_SSE_STREAMS_PER_KEY`).
    #[arg(long, env = "TASKFLEET_RATE_LIMIT_STREAM", default_value = "10/s:20")]
    pub rate_limit_stream: Limit,
}

/// One class's quota, or none, and how it reads: `100/s:200` (the burst always written out)
/// or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    quota: Option<Quota>,
    text: String,
}

impl FromStr for Limit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim() == "off" {
            return Ok(Limit {
                quota: None,
                text: "off".to_owned(),
            });
        }
        let bad = || format!("`{text}` is not a limit like `100/s`, `600/m:50` or `off`");
        let (rate, burst) = match text.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (text, None),
        };
        let (count, per) = rate.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.parse().map_err(|_| bad())?;
        let count = NonZeroU32::new(count).ok_or_else(bad)?;
        let quota = match per {
            "s" => Quota::per_second(count),
            "m" => Quota::per_minute(count),
            "h" => Quota::per_hour(count),
            _ => return Err(bad()),
        };
        let burst = match burst {
            Some(burst) => burst.trim().parse::<u32>().map_err(|_| bad())?,
            // Twice what a second replenishes, so a client may catch up after a pause.
            None => {
                (2 * Duration::from_secs(1).as_nanos()
                    / quota.replenish_interval().as_nanos().max(1)) as u32
            }
        };
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        // governor keeps the time a whole burst takes to come back in u64 nanoseconds (584
        // years), and overflows past it.
        if quota.replenish_interval().as_nanos() * u128::from(burst.get()) > u128::from(u64::MAX) {
            return Err(format!(
                "`{text}`: a burst that takes centuries to come back is not a limit; `off` is"
            ));
        }
        Ok(Limit {
            quota: Some(quota.allow_burst(burst)),
            text: format!("{count}/{per}:{burst}"),
        })
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The class of a request, by method and path; `None` for what is not limited (health,
/// metrics, the dashboard's files, the documents, OAuth's browser redirects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Submit,
    Read,
    Stream,
}

impl Class {
    fn of(req: &Request) -> Option<Class> {
        let path = req.uri().path();
        if !path.starts_with("/v1/") || path.starts_with("/v1/oauth/callback") {
            return None;
        }
        let streaming = path.ends_with("/events")
            || req
                .headers()
                .get(poem::http::header::ACCEPT)
                .and_then(|accept| accept.to_str().ok())
                .is_some_and(|accept| accept.contains("text/event-stream"));
        Some(match req.method() {
            _ if streaming => Class::Stream,
            &Method::GET | &Method::HEAD => Class::Read,
            _ => Class::Submit,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Class::Submit => "submit",
            Class::Read => "read",
            Class::Stream => "stream",
        }
    }
}

/// One of a thing per class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerClass<T> {
    submit: T,
    read: T,
    stream: T,
}

impl<T> PerClass<T> {
    fn from_fn(mut make: impl FnMut(Class) -> T) -> PerClass<T> {
        PerClass {
            submit: make(Class::Submit),
            read: make(Class::Read),
            stream: make(Class::Stream),
        }
    }

    pub fn get(&self, class: Class) -> &T {
        match class {
            Class::Submit => &self.submit,
            Class::Read => &self.read,
            Class::Stream => &self.stream,
        }
    }

    fn get_mut(&mut self, class: Class) -> &mut T {
        match class {
            Class::Submit => &mut self.submit,
            Class::Read => &mut self.read,
            Class::Stream => &mut self.stream,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        [&self.submit, &self.read, &self.stream].into_iter()
    }
}

type Limiter = DefaultKeyedRateLimiter<u64, StateInformationMiddleware>;

/// Whether a request fits its quota, and where that leaves the quota.
type Decision = Result<StateSnapshot, NotUntil<<DefaultClock as Clock>::Instant>>;

/// A limit and the limiter that holds keys to it, by key hash; none when the limit is `off`.
struct Gate {
    limit: Limit,
    limiter: Option<Limiter>,
}

impl Gate {
    fn new(limit: Limit) -> Gate {
        let limiter = limit
            .quota
            .map(|quota| RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>());
        Gate { limit, limiter }
    }

    /// Counts a request of `key`; `None` when nothing is limited.
    fn check(&self, key: u64) -> Option<Decision> {
        self.limiter.as_ref().map(|limiter| limiter.check_key(&key))
    }

    /// Forgets keys that have been quiet long enough to be back at a full burst, so memory
    /// follows the keys in use.
    fn forget_quiet_keys(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The limiters of one API process, keyed by a hash of the bearer key (the keys themselves
/// are not kept): the fleet's, and those of tenants with limits of their own.
pub struct RateLimits {
    defaults: PerClass<Gate>,
    tenants: RwLock<tenants::TenantGates>,
    /// Which tenant each key is, as authentication told.
    keys: RwLock<tenants::KnownKeys>,
    hasher: RandomState,
}

impl RateLimits {
    pub fn new(args: &RateLimitArgs) -> Arc<RateLimits> {
        Arc::new(RateLimits {
            defaults: PerClass {
                submit: Gate::new(args.rate_limit_submit.clone()),
                read: Gate::new(args.rate_limit_read.clone()),
                stream: Gate::new(args.rate_limit_stream.clone()),
            },
            tenants: Default::default(),
            keys: Default::default(),
            hasher: RandomState::new(),
        })
    }

    /// The fleet's limit of a class, for tenants without one of their own.
    pub fn default_limit(&self, class: Class) -> &Limit {
        &self.defaults.get(class).limit
    }

    /// Counts a request of `key` against its tenant's limit of the class when it has one,
    /// else against the fleet's; `None` when that limit is `off`.
    fn check(&self, class: Class, key: u64) -> Option<Decision> {
        let tenants = self.tenants.read().expect("tenant limits lock");
        let tenant = self.keys.read().expect("known keys lock").tenant(key);
        let own = tenant.and_then(|tenant| tenants.gate(tenant, class));
        own.unwrap_or(self.defaults.get(class)).check(key)
    }

    /// Every [`FORGET_EVERY`], forgets keys back at a full burst, and keys that have not
    /// authenticated since the sweep before, so memory follows the keys in use.
    pub fn forget_quiet_keys(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FORGET_EVERY);
            loop {
                every.tick().await;
                self.forget_quiet();
            }
        });
    }

    fn forget_quiet(&self) {
        for gate in self.defaults.iter() {
            gate.forget_quiet_keys();
        }
        self.tenants
            .read()
            .expect("tenant limits lock")
            .forget_quiet_keys();
        self.keys.write().expect("known keys lock").sweep();
    }
}

/// What the headers say of a quota after a decision.
struct Standing {
    limit: u32,
    remaining: u32,
    /// Seconds until the whole burst is available again.
    reset: u64,
}

impl Standing {
    fn new(quota: Quota, remaining: u32) -> Standing {
        let limit = quota.burst_size().get();
        let refill = quota.replenish_interval() * (limit - remaining);
        Standing {
            limit,
            remaining,
            reset: refill.as_secs_f64().ceil() as u64,
        }
    }

    fn write(&self, resp: &mut Response) {
        let headers = resp.headers_mut();
        for (name, value) in [
            ("ratelimit-limit", self.limit as u64),
            ("ratelimit-remaining", self.remaining as u64),
            ("ratelimit-reset", self.reset),
        ] {
            headers.insert(name, HeaderValue::from(value));
        }
    }
}

/// Counts the request against its key's quota for its class; answers 429 past it.
pub async fn rate_limit<E: Endpoint>(
    endpoint: Arc<E>,
    req: Request,
    limits: Arc<RateLimits>,
) -> poem::Result<Response> {
    let token = crate::auth::bearer_key(&req);
    // Requests without a key are refused by authentication, which needs no quota.
    let (Some(token), Some(class)) = (token, Class::of(&req)) else {
        return endpoint.call(req).await.map(IntoResponse::into_response);
    };
    let Some(decision) = limits.check(class, limits.hasher.hash_one(&token)) else {
        return endpoint.call(req).await.map(IntoResponse::into_response);
    };
    match decision {
        Ok(snapshot) => {
            let standing = Standing::new(snapshot.quota(), snapshot.remaining_burst_capacity());
            let mut resp = endpoint.call(req).await?.into_response();
            standing.write(&mut resp);
            Ok(resp)
        }
        Err(refused) => {
            let quota = refused.quota();
            let wait = refused.wait_time_from(DefaultClock::default().now());
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let every = quota.replenish_interval().as_secs_f64();
            let rate = match every <= 1.0 {
                true => format!("{:.0} a second", 1.0 / every),
                false => format!("one every {every:.0} s"),
            };
            let message = format!(
                "this key made more {} requests than it may ({rate}, bursts of {}); try again in \
                 {seconds} s",
                class.name(),
                quota.burst_size()
            );
            let mut resp =
                ApiError::too_many_requests("rate_limited", message, seconds).into_response();
            Standing::new(quota, 0).write(&mut resp);
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(text: &str) -> Quota {
        text.parse::<Limit>().unwrap().quota.unwrap()
    }

    #[test]
    fn limits_read_as_rate_and_burst() {
        assert_eq!(quota("100/s:200").burst_size().get(), 200);
        assert_eq!(quota("100/s").burst_size().get(), 200);
        assert_eq!(quota("60/m").replenish_interval(), Duration::from_secs(1));
        assert_eq!(quota("60/m").burst_size().get(), 2);
        assert_eq!(quota("1/h").burst_size().get(), 1);
        assert_eq!("off".parse::<Limit>().unwrap().quota, None);
        assert_eq!("100/s".parse::<Limit>().unwrap().to_string(), "100/s:200");
        assert_eq!(" 60/m:5 ".parse::<Limit>().unwrap().to_string(), "60/m:5");
        for bad in ["", "100", "0/s", "100/d", "x/s", "10/s:y", "1/h:10000000"] {
            assert!(bad.parse::<Limit>().is_err(), "{bad}");
        }
    }
}
