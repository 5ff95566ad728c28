//! GCRA (the generic cell rate algorithm), as pure arithmetic on one
//! clock: a limit's state is a single number, the theoretical arrival time
//! (TAT) of the next event. The same steps run inside Redis as a Lua
//! script (`lua` below, on Redis's own clock) and in this relay's fallback.
//!
//! With `limit` events per `per` and bursts of `burst`: each event moves
//! the TAT on by `interval = per / limit`; an event is allowed while the TAT
//! it leads to is at most `burst × interval` ahead of now. So `burst`
//! events pass at once, then one per `interval`.

use std::time::Duration;

/// One limit's parameters, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub interval_us: u64,
    pub tolerance_us: u64,
}

/// The verdict on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the state becomes `tat`.
    Allowed { tat: u64 },
    /// Refused; the next event would pass after `retry_after`.
    Limited { retry_after: Duration },
}

impl Gcra {
    /// `limit` events per `per`, `burst` at once (each at least 1).
    pub fn new(limit: u64, per: Duration, burst: u64) -> Self {
        let per_us = per.as_micros().min(u128::from(u64::MAX)) as u64;
        let interval_us = (per_us / limit.max(1)).max(1);
        Gcra {
            interval_us,
            tolerance_us: interval_us.saturating_mul(burst.max(1)),
        }
    }

    /// The verdict on an event at `now` with state `tat` (None: no event
    /// yet, or forgotten).
    pub fn check(&self, tat: Option<u64>, now: u64) -> Verdict {
        let tat = tat.unwrap_or(now).max(now);
        let new_tat = tat.saturating_add(self.interval_us);
        let ahead = new_tat - now;
        if ahead > self.tolerance_us {
            Verdict::Limited {
                retry_after: Duration::from_micros(ahead - self.tolerance_us),
            }
        } else {
            Verdict::Allowed { tat: new_tat }
        }
    }
}

/// The same steps in Redis: `KEYS[1]` the TAT, `ARGV[1]` the interval and
/// `ARGV[2]` the tolerance (µs). Time is Redis's (`TIME`), so relays'
/// clocks do not matter; the key expires once the TAT has passed. Returns
/// `{1, 0}` when allowed, `{0, retry_after_us}` when refused.
pub const LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then
  return {0, ahead - tolerance}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
return {1, 0}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_per_interval() {
        // 3 per minute, bursts of 3: interval 20 s.
        let g = Gcra::new(3, Duration::from_secs(60), 3);
        assert_eq!(g.interval_us, 20_000_000);
        let mut tat = None;
        let now = 1_000_000_000;
        for _ in 0..3 {
            match g.check(tat, now) {
                Verdict::Allowed { tat: t } => tat = Some(t),
                v => panic!("burst refused: {v:?}"),
            }
        }
        assert_eq!(
            g.check(tat, now),
            Verdict::Limited {
                retry_after: Duration::from_secs(20)
            }
        );
        // 20 s later, exactly one more.
        let later = now + 20_000_000;
        let Verdict::Allowed { tat: t } = g.check(tat, later) else {
            panic!("refused after the interval");
        };
        assert!(matches!(g.check(Some(t), later), Verdict::Limited { .. }));
    }

    #[test]
    fn an_old_state_is_a_fresh_start() {
        let g = Gcra::new(1, Duration::from_secs(1), 1);
        assert!(matches!(
            g.check(Some(5), 1_000_000_000),
            Verdict::Allowed { .. }
        ));
    }
}
