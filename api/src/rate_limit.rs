//! How fast one API key may call, per class of route: `submit` (anything that is not a read:
//! jobs, batches, chats, cancels, schedules), `read` (GETs) and `stream` (opening an SSE
//! stream). Each class has a GCRA quota (governor): a rate and a burst. Every answer of a
//! limited route carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; a
//! request past the quota is a 429 with `Retry-After`, before it costs a body read, a key
//! lookup or a query. Limits live in each API process: with several replicas behind a
//! balancer, a key may make the rate at each.

use std::{
    hash::{BuildHasher, RandomState},
    num::NonZeroU32,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock,
    middleware::StateInformationMiddleware,
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

/// One class's quota, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(Option<Quota>);

impl FromStr for Limit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim() == "off" {
            return Ok(Limit(None));
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
        Ok(Limit(Some(quota.allow_burst(burst))))
    }
}

/// The class of a request, by method and path; `None` for what is not limited (health,
/// metrics, the dashboard's files, the documents, OAuth's browser redirects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
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

type Limiter = DefaultKeyedRateLimiter<u64, StateInformationMiddleware>;

/// The limiters of one API process, keyed by a hash of the bearer key (the keys themselves
/// are not kept).
pub struct RateLimits {
    submit: Option<Limiter>,
    read: Option<Limiter>,
    stream: Option<Limiter>,
    hasher: RandomState,
}

impl RateLimits {
    pub fn new(args: &RateLimitArgs) -> Arc<RateLimits> {
        let limiter = |limit: Limit| {
            limit.0.map(|quota| {
                RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
            })
        };
        Arc::new(RateLimits {
            submit: limiter(args.rate_limit_submit),
            read: limiter(args.rate_limit_read),
            stream: limiter(args.rate_limit_stream),
            hasher: RandomState::new(),
        })
    }

    fn limiter(&self, class: Class) -> Option<&Limiter> {
        match class {
            Class::Submit => self.submit.as_ref(),
            Class::Read => self.read.as_ref(),
            Class::Stream => self.stream.as_ref(),
        }
    }

    /// Forgets keys that have been quiet long enough to be back at a full burst, so memory
    /// follows the keys in use.
    pub fn forget_quiet_keys(self: Arc<Self>) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FORGET_EVERY);
            loop {
                every.tick().await;
                for limiter in [&self.submit, &self.read, &self.stream]
                    .into_iter()
                    .flatten()
                {
                    limiter.retain_recent();
                    limiter.shrink_to_fit();
                }
            }
        });
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
    let Some(limiter) = limits.limiter(class) else {
        return endpoint.call(req).await.map(IntoResponse::into_response);
    };
    match limiter.check_key(&limits.hasher.hash_one(token)) {
        Ok(snapshot) => {
            let standing = Standing::new(snapshot.quota(), snapshot.remaining_burst_capacity());
            let mut resp = endpoint.call(req).await?.into_response();
            standing.write(&mut resp);
            Ok(resp)
        }
        Err(refused) => {
            let quota = refused.quota();
            let wait = refused.wait_time_from(governor::clock::DefaultClock::default().now());
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
        text.parse::<Limit>().unwrap().0.unwrap()
    }

    #[test]
    fn limits_read_as_rate_and_burst() {
        assert_eq!(quota("100/s:200").burst_size().get(), 200);
        assert_eq!(quota("100/s").burst_size().get(), 200);
        assert_eq!(quota("60/m").replenish_interval(), Duration::from_secs(1));
        assert_eq!(quota("60/m").burst_size().get(), 2);
        assert_eq!(quota("1/h").burst_size().get(), 1);
        assert_eq!("off".parse::<Limit>().unwrap(), Limit(None));
        for bad in ["", "100", "0/s", "100/d", "x/s", "10/s:y"] {
            assert!(bad.parse::<Limit>().is_err(), "{bad}");
        }
    }
}
