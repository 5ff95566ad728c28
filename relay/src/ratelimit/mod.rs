//! Rate limits per identity (`[[rate_limit]]`): GCRA ([`gcra`]) per limit
//! and subject, held in Redis across every relay ([`crate::shared`]); while
//! Redis is out of reach (or not configured), this relay decides alone at
//! limit ÷ `expected_relays`, so the fleet together stays near the limit.
//!
//! A refused event is answered by the caller: a typed `rate_limited`
//! stream refusal, or HTTP 429 with `Retry-After`; both with an audit line.

pub mod gcra;
pub mod sessions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Counted, RateLimitRule};
use crate::metrics::Metrics;
use crate::shared::Shared;
use gcra::{Gcra, Verdict};

/// Local states beyond this are pruned of the spent ones.
const LOCAL_PRUNE_AT: usize = 10_000;

/// An event refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// The limit's name.
    pub limit: String,
    /// When the next event would pass (at least a second, rounded up).
    pub retry_after: Duration,
    /// "100 per 60 s", for messages.
    pub rate: String,
}

impl Limited {
    /// Whole seconds for `Retry-After`, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let s = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        s.max(1)
    }
}

/// Every rate limit of the relay.
pub struct Limiter {
    rules: Vec<RateLimitRule>,
    shared: Option<Arc<Shared>>,
    expected_relays: u32,
    local: Mutex<HashMap<(String, String), u64>>,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl Limiter {
    pub fn new(
        rules: Vec<RateLimitRule>,
        shared: Option<Arc<Shared>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let expected_relays = shared.as_ref().map_or(1, |s| s.expected_relays());
        Self {
            rules,
            shared,
            expected_relays,
            local: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            metrics,
        }
    }

    /// May `subject` have one more `on` event of `service` (at `path`)?
    /// Every limit that applies counts it; the first that refuses says so.
    pub async fn check(
        &self,
        on: Counted,
        service: &str,
        path: Option<&str>,
        subject: &str,
    ) -> Result<(), Limited> {
        for rule in self.rules.iter().filter(|r| r.applies(on, service, path)) {
            let verdict = self.one(rule, subject).await;
            if let Verdict::Limited { retry_after } = verdict {
                self.metrics
                    .rate_limited
                    .with_label_values(&[rule.name.as_str()])
                    .inc();
                return Err(Limited {
                    limit: rule.name.clone(),
                    retry_after,
                    rate: format!("{} per {} s", rule.limit, rule.per.as_secs()),
                });
            }
        }
        Ok(())
    }

    async fn one(&self, rule: &RateLimitRule, subject: &str) -> Verdict {
        if let Some(shared) = &self.shared {
            let g = Gcra::new(rule.limit, rule.per, rule.burst);
            if let Some(v) = shared.gcra(&rule.name, subject, g).await {
                return v;
            }
            self.metrics
                .rate_limit_fallbacks
                .with_label_values(&[rule.name.as_str()])
                .inc();
        }
        self.local(rule, subject)
    }

    /// This relay's share of the limit: limit ÷ expected relays (at least
    /// one event), on its own clock.
    fn local(&self, rule: &RateLimitRule, subject: &str) -> Verdict {
        let n = u64::from(self.expected_relays.max(1));
        let g = Gcra::new((rule.limit / n).max(1), rule.per, (rule.burst / n).max(1));
        let now = self.epoch.elapsed().as_micros() as u64;
        let mut map = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= LOCAL_PRUNE_AT {
            map.retain(|_, tat| *tat > now);
        }
        let key = (rule.name.clone(), subject.to_string());
        let verdict = g.check(map.get(&key).copied(), now);
        if let Verdict::Allowed { tat } = verdict {
            map.insert(key, tat);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(limit: u64, burst: u64) -> RateLimitRule {
        RateLimitRule {
            name: "api".into(),
            on: Counted::Requests,
            service: Some("wiki".into()),
            path_prefix: Some("/rest/".into()),
            limit,
            per: Duration::from_secs(60),
            burst,
        }
    }

    #[tokio::test]
    async fn alone_a_relay_allows_its_share_per_subject() {
        let l = Limiter::new(vec![rule(4, 4)], None, Arc::new(Metrics::new()));
        for _ in 0..4 {
            l.check(Counted::Requests, "wiki", Some("/rest/api"), "alice")
                .await
                .unwrap();
        }
        let e = l
            .check(Counted::Requests, "wiki", Some("/rest/api"), "alice")
            .await
            .unwrap_err();
        assert_eq!(e.limit, "api");
        assert_eq!(e.retry_after_secs(), 15);
        // Another subject, path, service or kind of event is not counted.
        l.check(Counted::Requests, "wiki", Some("/rest/api"), "bob")
            .await
            .unwrap();
        l.check(Counted::Requests, "wiki", Some("/pages"), "alice")
            .await
            .unwrap();
        l.check(Counted::Streams, "wiki", None, "alice")
            .await
            .unwrap();
    }
}
