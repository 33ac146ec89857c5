//! Rate limits: a token bucket, and per-IP buckets for new connections.
//!
//! Written here rather than with `governor`: the per-connection bucket lives
//! inside the session (no lock, no map), and the per-IP map needs a hard
//! bound on tracked addresses, which we keep by forgetting idle (full)
//! buckets when the map is at its bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::Metrics;

/// Addresses tracked by [`IpRateLimiter`] (`connection_rate_ips_max`).
pub const MAX_TRACKED_IPS: usize = 100_000;

/// `rate` tokens per second, at most `burst` saved up. A rate of 0 disables it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// Take one token; false when the bucket is empty.
    pub fn allow(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// A connection's command and publish rates (`client.command_rate`,
/// `client.publish_rate`), shared by protocol and relay sessions.
#[derive(Debug, Clone)]
pub struct ConnRates {
    commands: TokenBucket,
    publishes: TokenBucket,
    /// `client.rate_refusals_max` (0: never disconnect).
    refusals_max: u32,
    /// `client.rate_refusals_window`.
    refusals_window: Duration,
    /// Refusals in the window that started at `window_start`.
    refusals: u32,
    window_start: Instant,
}

/// What to do with a command over the rate (see [`ConnRates::refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Answer 111 "too many requests" and go on.
    Warn,
    /// The client kept going after `rate_refusals_max` warnings within
    /// `rate_refusals_window`: close with 3013 "too many requests".
    Disconnect,
}

impl ConnRates {
    pub fn new(c: &crate::config::ClientConfig) -> ConnRates {
        ConnRates {
            commands: TokenBucket::new(c.command_rate, c.command_burst),
            publishes: TokenBucket::new(c.publish_rate, c.publish_burst),
            refusals_max: c.rate_refusals_max,
            refusals_window: c.rate_refusals_window,
            refusals: 0,
            window_start: Instant::now(),
        }
    }

    /// Count one refused command: `Disconnect` once more than
    /// `rate_refusals_max` were refused within `rate_refusals_window`
    /// (counted from the first refusal of a window).
    pub fn refused(&mut self) -> Refusal {
        if self.refusals_max == 0 {
            return Refusal::Warn;
        }
        let now = Instant::now();
        if self.refusals == 0 || now.duration_since(self.window_start) > self.refusals_window {
            self.refusals = 0;
            self.window_start = now;
        }
        self.refusals += 1;
        if self.refusals > self.refusals_max {
            Metrics::limit_hit("rate_refusals_max");
            Refusal::Disconnect
        } else {
            Refusal::Warn
        }
    }

    /// Take a token for one command (and one publish when `publish`).
    /// `Err` names the limit that refused it, already counted in
    /// `groupcast_limit_hits_total`. A refused command still spends its
    /// command token.
    pub fn check(&mut self, publish: bool) -> Result<(), &'static str> {
        let limit = if !self.commands.allow() {
            "command_rate"
        } else if publish && !self.publishes.allow() {
            "publish_rate"
        } else {
            return Ok(());
        };
        Metrics::limit_hit(limit);
        Err(limit)
    }
}

/// New-connection rate per client address.
pub struct IpRateLimiter {
    rate: f64,
    burst: f64,
    capacity: usize,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl IpRateLimiter {
    pub fn new(rate: f64, burst: f64) -> IpRateLimiter {
        Self::with_capacity(rate, burst, MAX_TRACKED_IPS)
    }

    /// At most `capacity` addresses tracked at once.
    pub fn with_capacity(rate: f64, burst: f64, capacity: usize) -> IpRateLimiter {
        IpRateLimiter {
            rate,
            burst,
            capacity,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut map = self.buckets.lock();
        if map.len() >= self.capacity && !map.contains_key(&ip) {
            let now = Instant::now();
            map.retain(|_, b| !b.is_full(now));
            if map.len() >= self.capacity {
                // Every tracked address is active: admit rather than track more.
                Metrics::limit_hit("connection_rate_ips_max");
                return true;
            }
        }
        map.entry(ip)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .allow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::new(1000.0, 3.0);
        assert!(b.allow() && b.allow() && b.allow());
        assert!(!b.allow(), "burst spent");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(b.allow(), "refilled at the rate");
        let mut off = TokenBucket::new(0.0, 1.0);
        assert!((0..1000).all(|_| off.allow()), "rate 0 is off");
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let l = IpRateLimiter::with_capacity(1000.0, 1.0, 2);
        let ip = |n: u8| -> IpAddr { std::net::Ipv4Addr::new(10, 0, 0, n).into() };
        assert!(l.allow(ip(1)) && l.allow(ip(2)));
        // Both buckets are empty (active): a third address is admitted untracked.
        assert!(l.allow(ip(3)));
        assert_eq!(l.buckets.lock().len(), 2, "never more than the capacity");
        // Once the others refill (idle), they are forgotten to make room.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(l.allow(ip(4)));
        assert!(l.buckets.lock().contains_key(&ip(4)));
        assert!(l.buckets.lock().len() <= 2);
    }

    #[test]
    fn conn_rates_name_the_bucket_that_refused() {
        let mut c = crate::config::ClientConfig {
            command_rate: 0.001,
            command_burst: 2.0,
            publish_rate: 0.001,
            publish_burst: 1.0,
            ..Default::default()
        };
        let mut r = ConnRates::new(&c);
        assert_eq!(r.check(true), Ok(()));
        assert_eq!(
            r.check(true),
            Err("publish_rate"),
            "publish bucket empty first"
        );
        assert_eq!(
            r.check(true),
            Err("command_rate"),
            "then the command bucket"
        );
        c.command_rate = 0.0;
        c.publish_rate = 0.0;
        let mut off = ConnRates::new(&c);
        assert!(
            (0..1000).all(|_| off.check(true).is_ok()),
            "rates 0 are off"
        );
    }

    #[test]
    fn per_ip_buckets_are_separate() {
        let l = IpRateLimiter::new(0.001, 2.0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.allow(a) && l.allow(a));
        assert!(!l.allow(a));
        assert!(l.allow(b), "another address has its own bucket");
    }
}
