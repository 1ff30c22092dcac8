//! Requests per client per minute (the document's "每分钟最多100个请求"),
//! answered beyond the limit with 429 RATE_LIMIT_EXCEEDED and `Retry-After`.
//!
//! A client is an IP address: the peer's, or, when the peer is a trusted
//! proxy on loopback (Envoy), the last `X-Forwarded-For` entry, which Envoy
//! appends itself (`use_remote_address`), so clients cannot choose it.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::Response,
};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};

use super::{auth::is_health_check, reject};
use crate::error::Error;

#[derive(Clone)]
pub struct RateLimit {
    per_minute: u32,
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl RateLimit {
    /// `per_minute == 0` turns limiting off.
    pub fn per_minute(per_minute: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| {
            let limiter = Arc::new(RateLimiter::keyed(Quota::per_minute(n)));
            // Forget idle clients so the table does not grow without bound.
            let weak = Arc::downgrade(&limiter);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    let Some(l) = weak.upgrade() else { break };
                    l.retain_recent();
                }
            });
            limiter
        });
        Self {
            per_minute,
            limiter,
        }
    }
}

fn client_ip(req: &Request, peer: SocketAddr) -> IpAddr {
    if !peer.ip().is_loopback() {
        return peer.ip();
    }
    req.headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(peer.ip())
}

pub async fn limit_rate(
    State(rate): State<RateLimit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let Some(limiter) = &rate.limiter else {
        return next.run(req).await;
    };
    if is_health_check(req.uri().path()) {
        return next.run(req).await;
    }
    match limiter.check_key(&client_ip(&req, peer)) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            let retry_after = Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64);
            reject(
                &req,
                Error::RateLimited {
                    per_minute: rate.per_minute,
                    retry_after,
                },
            )
        }
    }
}
