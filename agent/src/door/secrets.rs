//! The door's local secrets: what a local HTTP request must carry to be let
//! through.
//!
//! - The **git secret**: the password of HTTP Basic credentials that the
//!   `gangway git credential` helper hands to git. Random (32 bytes,
//!   base64url), rotated every [`ROTATE_EVERY`]; the previous one is still
//!   accepted for one more period, so a long clone that asked the helper
//!   just before a rotation keeps working.
//! - The **browser secret**: the value of the [`COOKIE`] cookie, set in the
//!   browser through a one-time URL. One per agent process (a restart signs
//!   every browser out of the door).
//! - **One-time tokens** for those URLs: single use, [`TOKEN_TTL`], bound to
//!   one listener's port.
//!
//! Every comparison is constant-time (`subtle`). None of these is ever
//! logged, written to a file or put in a process argument; `Debug` shows
//! nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

/// The door cookie's name.
pub const COOKIE: &str = "gangway_door";

/// How often the git secret changes.
pub const ROTATE_EVERY: Duration = Duration::from_secs(60 * 60);

/// How long a one-time URL stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// At most this many one-time URLs wait at once (the oldest goes first).
const MAX_TOKENS: usize = 16;

/// Random bytes in each secret.
const SECRET_BYTES: usize = 32;

/// The length of every secret as text (base64url of 32 bytes, no padding).
pub const SECRET_LEN: usize = 43;

/// A fresh random secret: 32 bytes from the OS, base64url.
fn fresh() -> String {
    let mut b = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // Lengths are public (every secret has SECRET_LEN); the bytes are not.
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

struct GitSecrets {
    current: String,
    previous: Option<String>,
    since: Instant,
}

struct OneTime {
    token: String,
    port: u16,
    expires: Instant,
}

/// See the module docs.
pub struct LocalSecrets {
    git: Mutex<GitSecrets>,
    browser: String,
    tokens: Mutex<Vec<OneTime>>,
}

impl std::fmt::Debug for LocalSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalSecrets(<redacted>)")
    }
}

impl Default for LocalSecrets {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LocalSecrets {
    pub fn new() -> Self {
        LocalSecrets {
            git: Mutex::new(GitSecrets {
                current: fresh(),
                previous: None,
                since: Instant::now(),
            }),
            browser: fresh(),
            tokens: Mutex::new(Vec::new()),
        }
    }

    fn rotated(&self, now: Instant) -> std::sync::MutexGuard<'_, GitSecrets> {
        let mut g = lock(&self.git);
        let age = now.saturating_duration_since(g.since);
        if age >= ROTATE_EVERY {
            // Two periods or more: the previous one is too old as well.
            let old = std::mem::replace(&mut g.current, fresh());
            g.previous = (age < 2 * ROTATE_EVERY).then_some(old);
            g.since = now;
        }
        g
    }

    /// The git secret to hand out now.
    pub fn git_secret(&self) -> String {
        self.git_secret_at(Instant::now())
    }

    fn git_secret_at(&self, now: Instant) -> String {
        self.rotated(now).current.clone()
    }

    /// Whether `password` is the current or the previous git secret.
    pub fn git_accepts(&self, password: &[u8]) -> bool {
        self.git_accepts_at(password, Instant::now())
    }

    fn git_accepts_at(&self, password: &[u8], now: Instant) -> bool {
        let g = self.rotated(now);
        // Both compared, whichever matches: no early exit to time.
        let cur = same(password, g.current.as_bytes());
        let prev = g
            .previous
            .as_ref()
            .is_some_and(|p| same(password, p.as_bytes()));
        cur | prev
    }

    /// The door cookie's value.
    pub fn browser_secret(&self) -> &str {
        &self.browser
    }

    /// Whether `value` is the door cookie's value.
    pub fn browser_accepts(&self, value: &[u8]) -> bool {
        same(value, self.browser.as_bytes())
    }

    /// A new one-time token for the listener on `port`.
    pub fn one_time_token(&self, port: u16) -> String {
        self.one_time_token_at(port, Instant::now())
    }

    fn one_time_token_at(&self, port: u16, now: Instant) -> String {
        let token = fresh();
        let mut t = lock(&self.tokens);
        t.retain(|x| x.expires > now);
        if t.len() >= MAX_TOKENS {
            t.remove(0);
        }
        t.push(OneTime {
            token: token.clone(),
            port,
            expires: now + TOKEN_TTL,
        });
        token
    }

    /// Uses up `token` at the listener on `port`: `true` once, if it was
    /// issued for that port and has not expired.
    pub fn redeem(&self, token: &[u8], port: u16) -> bool {
        self.redeem_at(token, port, Instant::now())
    }

    fn redeem_at(&self, token: &[u8], port: u16, now: Instant) -> bool {
        let mut t = lock(&self.tokens);
        t.retain(|x| x.expires > now);
        let mut found = None;
        for (i, x) in t.iter().enumerate() {
            if same(token, x.token.as_bytes()) {
                found = Some(i);
            }
        }
        match found {
            Some(i) => t.remove(i).port == port,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_hidden() {
        let s = LocalSecrets::new();
        let g = s.git_secret();
        assert_eq!(g.len(), SECRET_LEN);
        assert_eq!(s.browser_secret().len(), SECRET_LEN);
        assert_ne!(g, s.browser_secret());
        assert_ne!(g, LocalSecrets::new().git_secret());
        assert!(!format!("{s:?}").contains(&g));
        assert!(s.git_accepts(g.as_bytes()));
        assert!(!s.git_accepts(&g.as_bytes()[1..]));
        assert!(!s.git_accepts(s.browser_secret().as_bytes()));
        assert!(s.browser_accepts(s.browser_secret().as_bytes()));
        assert!(!s.browser_accepts(b""));
    }

    #[test]
    fn the_git_secret_rotates_and_the_previous_one_stays_one_period() {
        let s = LocalSecrets::new();
        let t0 = Instant::now();
        let first = s.git_secret_at(t0);
        let t1 = t0 + ROTATE_EVERY + Duration::from_secs(1);
        let second = s.git_secret_at(t1);
        assert_ne!(first, second);
        assert!(s.git_accepts_at(first.as_bytes(), t1));
        assert!(s.git_accepts_at(second.as_bytes(), t1));
        let t2 = t1 + ROTATE_EVERY;
        let third = s.git_secret_at(t2);
        assert!(!s.git_accepts_at(first.as_bytes(), t2));
        assert!(s.git_accepts_at(second.as_bytes(), t2));
        assert!(s.git_accepts_at(third.as_bytes(), t2));
        // Idle for two periods: nothing old is left.
        let t3 = t2 + 2 * ROTATE_EVERY;
        assert!(!s.git_accepts_at(second.as_bytes(), t3));
        assert!(!s.git_accepts_at(third.as_bytes(), t3));
    }

    #[test]
    fn one_time_tokens_are_single_use_per_port_and_expire() {
        let s = LocalSecrets::new();
        let t0 = Instant::now();
        let a = s.one_time_token_at(8090, t0);
        assert!(!s.redeem_at(b"not-a-token", 8090, t0));
        assert!(s.redeem_at(a.as_bytes(), 8090, t0));
        assert!(!s.redeem_at(a.as_bytes(), 8090, t0), "used twice");
        // Issued for another listener: refused, and used up.
        let b = s.one_time_token_at(8090, t0);
        assert!(!s.redeem_at(b.as_bytes(), 7990, t0));
        assert!(!s.redeem_at(b.as_bytes(), 8090, t0));
        // Too late.
        let c = s.one_time_token_at(8090, t0);
        assert!(!s.redeem_at(c.as_bytes(), 8090, t0 + TOKEN_TTL));
        // Only the newest MAX_TOKENS wait.
        let first = s.one_time_token_at(8090, t0);
        for _ in 0..MAX_TOKENS {
            s.one_time_token_at(8090, t0);
        }
        assert!(!s.redeem_at(first.as_bytes(), 8090, t0));
    }
}
