//! What relays share through Redis (`[redis]`): the rate limits' GCRA
//! states and the subject locks, plus a pub/sub channel that tells every
//! relay at once when a subject is locked or unlocked.
//!
//! Redis is a help, not a dependency: every command has a deadline
//! (`timeout_ms`); when one fails the relay marks Redis unreachable, logs
//! it once, sets `gangway_relay_rate_limits_shared` to 0 and decides alone
//! (rate limits at limit ÷ `expected_relays`, locks from what it has
//! learned) while probing Redis at most once a second; the first command
//! that works again is logged and the gauge goes back to 1.
//!
//! Keys (all under `key_prefix`): `<p>:rl:<limit>:<subject>` a GCRA state
//! (µs, expiring once spent), `<p>:lock:<subject>` a lock (JSON: by whom,
//! why, when), `<p>:dpop:<hash>` a DPoP proof already used (expiring with
//! the proof, see `crate::dpop`), channel `<p>:locks` lock notices.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::ratelimit::gcra::{Gcra, Verdict, LUA};

/// Why Redis cannot be used at all (a bad URL or password file).
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("redis.url: {0}")]
    Url(redis::RedisError),
    #[error("redis.password_file {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
}

/// Takes a place among a subject's sessions across relays: `KEYS[1]` a
/// sorted set of session ids scored by when they lapse (ms, Redis's
/// clock), `ARGV[1]` the cap, `ARGV[2]` the session id, `ARGV[3]` the
/// lease in ms. Lapsed leases (relays that died) are dropped first.
/// Returns 1 when taken, 0 at the cap.
const SESSION_TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"#;

/// Renews a session's lease (`ARGV[1]` id, `ARGV[2]` lease ms).
const SESSION_RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"#;

/// How often an unreachable Redis is tried again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A lock as Redis holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub by: String,
    pub reason: String,
    pub at_unix: u64,
}

/// A notice on the channel: a lock (`op` "lock" or "unlock", with
/// `subject`) or a backend's drain ("drain" or "enable", with `service`
/// and `backend`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Notice {
    pub op: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub lock: Option<LockInfo>,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub backend: Option<String>,
}

/// The connection to Redis and whether it answers.
pub struct Shared {
    client: redis::Client,
    conn: ConnectionManager,
    cfg: RedisConfig,
    script: redis::Script,
    reach: Mutex<Reach>,
    metrics: Arc<Metrics>,
}

struct Reach {
    up: bool,
    next_probe: Option<Instant>,
}

impl Shared {
    /// Prepares the connection (made at the first command, retried after).
    pub fn new(cfg: &RedisConfig, metrics: Arc<Metrics>) -> Result<Self, SharedError> {
        let mut info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(SharedError::Url)?;
        if let Some(path) = &cfg.password_file {
            let pw = std::fs::read_to_string(path).map_err(|e| SharedError::Password {
                path: path.display().to_string(),
                source: e,
            })?;
            let settings = info.redis_settings().clone().set_password(pw.trim_end());
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(SharedError::Url)?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_lazy(mcfg)
            .map_err(SharedError::Url)?;
        metrics.rate_limits_shared.set(1);
        Ok(Shared {
            client,
            conn,
            cfg: cfg.clone(),
            script: redis::Script::new(LUA),
            reach: Mutex::new(Reach {
                up: true,
                next_probe: None,
            }),
            metrics,
        })
    }

    /// Relays the limits are split across while Redis is out of reach.
    pub fn expected_relays(&self) -> u32 {
        self.cfg.expected_relays
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.cfg.key_prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    fn reach(&self) -> std::sync::MutexGuard<'_, Reach> {
        self.reach.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `cmd` against Redis within the deadline; `None` when Redis is
    /// unreachable (or was a moment ago and is not due for a probe).
    async fn run<T, F, Fut>(&self, cmd: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        {
            let mut r = self.reach();
            if !r.up {
                match r.next_probe {
                    Some(t) if Instant::now() < t => return None,
                    _ => r.next_probe = Some(Instant::now() + PROBE_EVERY),
                }
            }
        }
        let result = tokio::time::timeout(self.cfg.timeout, cmd(self.conn.clone())).await;
        let mut r = self.reach();
        match result {
            Ok(Ok(v)) => {
                if !r.up {
                    r.up = true;
                    r.next_probe = None;
                    self.metrics.rate_limits_shared.set(1);
                    tracing::warn!("Redis reachable again: rate limits and locks are shared across relays again");
                }
                Some(v)
            }
            Ok(Err(e)) => {
                self.down(&mut r, &e.to_string());
                None
            }
            Err(_) => {
                self.down(&mut r, "timed out");
                None
            }
        }
    }

    /// Pings Redis now (a few tries, ignoring the probe interval), so a
    /// Redis that came back is used at once.
    async fn probe(&self) {
        for _ in 0..5 {
            self.reach().next_probe = None;
            let pong: Option<String> = self
                .run(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
                .await;
            if pong.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn down(&self, r: &mut Reach, why: &str) {
        if r.up {
            r.up = false;
            r.next_probe = Some(Instant::now() + PROBE_EVERY);
            self.metrics.rate_limits_shared.set(0);
            tracing::warn!(
                error = why,
                expected_relays = self.cfg.expected_relays,
                "Redis out of reach: rate limits fall back to limit ÷ expected_relays on this relay, locks to what this relay knows"
            );
        }
    }

    /// One GCRA step for `limit`/`subject` on Redis's clock; `None` when
    /// Redis is out of reach.
    pub async fn gcra(&self, limit: &str, subject: &str, g: Gcra) -> Option<Verdict> {
        let key = self.key(&["rl", limit, subject]);
        let script = &self.script;
        let (ok, retry_us): (i64, i64) = self
            .run(|mut c| async move {
                script
                    .key(key)
                    .arg(g.interval_us)
                    .arg(g.tolerance_us)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(if ok == 1 {
            Verdict::Allowed { tat: 0 }
        } else {
            Verdict::Limited {
                retry_after: Duration::from_micros(retry_us.max(0) as u64),
            }
        })
    }

    /// The lock on `subject`, if any; `None` when Redis is out of reach.
    pub async fn lock_of(&self, subject: &str) -> Option<Option<LockInfo>> {
        let key = self.key(&["lock", subject]);
        let raw: Option<String> = self.run(|mut c| async move { c.get(key).await }).await?;
        Some(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Every lock in Redis; `None` when out of reach.
    pub async fn locks(&self) -> Option<Vec<(String, LockInfo)>> {
        let pattern = self.key(&["lock", "*"]);
        let prefix = self.key(&["lock", ""]);
        let keys: Vec<String> = self
            .run(|mut c| async move {
                let mut out = Vec::new();
                let mut iter: redis::AsyncIter<String> = c.scan_match(pattern).await?;
                while let Some(k) = iter.next_item().await {
                    out.push(k?);
                    if out.len() >= 10_000 {
                        break;
                    }
                }
                Ok(out)
            })
            .await?;
        let mut locks = Vec::new();
        for k in keys {
            let subject = k.strip_prefix(&prefix).unwrap_or(&k).to_string();
            if let Some(Some(info)) = self.lock_of(&subject).await {
                locks.push((subject, info));
            }
        }
        Some(locks)
    }

    /// Stores (or with `None`, removes) the lock on `subject` and tells
    /// every relay; false when Redis is out of reach.
    pub async fn set_lock(&self, subject: &str, lock: Option<&LockInfo>) -> bool {
        let key = self.key(&["lock", subject]);
        let channel = self.key(&["locks"]);
        let notice = Notice {
            op: if lock.is_some() { "lock" } else { "unlock" }.into(),
            subject: subject.to_string(),
            lock: lock.cloned(),
            ..Default::default()
        };
        let Ok(notice) = serde_json::to_string(&notice) else {
            return false;
        };
        let value = lock.and_then(|l| serde_json::to_string(l).ok());
        self.run(|mut c| async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            match value {
                Some(v) => pipe.set(&key, v).ignore(),
                None => pipe.del(&key).ignore(),
            };
            pipe.publish(&channel, notice).ignore();
            pipe.query_async::<()>(&mut c).await
        })
        .await
        .is_some()
    }

    /// Takes a place for session `id` among `subject`'s (at most `max`
    /// across relays, each held for `lease` unless renewed); `None` when
    /// Redis is out of reach.
    pub async fn take_session(
        &self,
        subject: &str,
        id: &str,
        max: usize,
        lease: Duration,
    ) -> Option<bool> {
        let key = self.key(&["sess", subject]);
        let script = redis::Script::new(SESSION_TAKE);
        let taken: i64 = self
            .run(|mut c| async move {
                script
                    .key(key)
                    .arg(max)
                    .arg(id)
                    .arg(lease.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(taken == 1)
    }

    /// Renews session `id`'s lease.
    pub async fn renew_session(&self, subject: &str, id: &str, lease: Duration) {
        let key = self.key(&["sess", subject]);
        let script = redis::Script::new(SESSION_RENEW);
        let _: Option<i64> = self
            .run(|mut c| async move {
                script
                    .key(key)
                    .arg(id)
                    .arg(lease.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
    }

    /// Gives session `id`'s place back.
    pub async fn release_session(&self, subject: &str, id: &str) {
        let key = self.key(&["sess", subject]);
        let _: Option<i64> = self.run(|mut c| async move { c.zrem(key, id).await }).await;
    }

    /// Marks `parts` used for `ttl` unless it already is: `Some(true)` the
    /// first time, `Some(false)` after; `None` when Redis is out of reach.
    pub async fn first_use(&self, parts: &[&str], ttl: Duration) -> Option<bool> {
        let key = self.key(parts);
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Some(set.is_some())
    }

    /// Tells every relay to drain (or re-enable) `backend` of `service`;
    /// false when Redis is out of reach.
    pub async fn publish_drain(&self, service: &str, backend: &str, drained: bool) -> bool {
        let channel = self.key(&["locks"]);
        let notice = Notice {
            op: if drained { "drain" } else { "enable" }.into(),
            service: Some(service.to_string()),
            backend: Some(backend.to_string()),
            ..Default::default()
        };
        let Ok(notice) = serde_json::to_string(&notice) else {
            return false;
        };
        self.run(|mut c| async move { c.publish::<_, _, ()>(channel, notice).await })
            .await
            .is_some()
    }

    /// Follows the lock channel until `stop`, handing each notice to
    /// `on_notice`; reconnects after a pause when the subscription breaks.
    pub async fn follow_locks(
        self: Arc<Self>,
        on_notice: impl Fn(Notice) + Send + 'static,
        stop: CancellationToken,
    ) {
        use futures::StreamExt;
        let channel = self.key(&["locks"]);
        loop {
            let subscribed = async {
                let mut ps = tokio::time::timeout(self.cfg.timeout, self.client.get_async_pubsub())
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                ps.subscribe(&channel).await.map_err(|e| e.to_string())?;
                tracing::info!(%channel, "following lock notices in Redis");
                // Redis answers again: let the commands know without
                // waiting for the next rate-limit check to probe.
                self.probe().await;
                let mut messages = ps.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    match serde_json::from_str::<Notice>(&payload) {
                        Ok(n) => on_notice(n),
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed lock notice"),
                    }
                }
                Err::<(), String>("subscription closed".into())
            };
            tokio::select! {
                r = subscribed => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "lock notices: subscription lost; retrying");
                    }
                }
                _ = stop.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}
