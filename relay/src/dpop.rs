//! DPoP at the relay (RFC 9449): how the caller presented its token, and
//! the checks that tie a bound token to the key of the agent holding it.
//!
//! After the token itself is verified ([`crate::auth`]):
//!
//! - `Authorization: DPoP <token>` needs exactly one `DPoP` header whose
//!   proof passes [`gangway_dpop::check`] for this request (`htm`, `htu`,
//!   `ath` over the token, `iat` within `identity.dpop_iat_window_secs`),
//!   is signed by the key the token names (`cnf.jkt` = the key's RFC 7638
//!   thumbprint), and whose `jti` no relay has seen ([`Replays`]). The
//!   token must be bound (`cnf.jkt`).
//! - `Authorization: Bearer <token>` is refused for a bound token (it was
//!   meant to travel with proofs) and when `identity.require_dpop` is set.
//!
//! `htu` is compared with `public_url` plus the endpoint's path. A relay
//! without `public_url` (allowed only while nothing requires DPoP)
//! compares the proof's host and path with the request's Host header.
//!
//! The in-band token refresh of a session ([`crate::tunnel`]) goes through
//! the same checks, with the `htu` of the session's upgrade.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gangway_dpop::{Expected, Htu};
use http::HeaderMap;

use crate::auth::{AuthError, Identity};
use crate::config::DpopConfig;
use crate::shared::Shared;

/// The token's scheme in `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Dpop,
}

/// A token as the request presented it.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub scheme: Scheme,
    pub token: &'a str,
    /// The `DPoP` header, if one was sent.
    pub proof: Option<&'a str>,
}

const NOT_AUTHORIZATION: &str = "authorization header is not 'Bearer <token>' or 'DPoP <token>'";

/// Reads `Authorization` (Bearer or DPoP) and the `DPoP` header.
pub fn presented(headers: &HeaderMap) -> Result<Presented<'_>, AuthError> {
    let v = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?;
    let s = v
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization header is not text".into()))?;
    let (scheme, token) = s
        .split_once(' ')
        .ok_or_else(|| AuthError::Malformed(NOT_AUTHORIZATION.into()))?;
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::Dpop
    } else {
        return Err(AuthError::Malformed(NOT_AUTHORIZATION.into()));
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed(NOT_AUTHORIZATION.into()));
    }
    let mut proofs = headers.get_all("dpop").iter();
    let proof = match (proofs.next(), proofs.next()) {
        (None, _) => None,
        (Some(p), None) => Some(p.to_str().map_err(|_| {
            AuthError::Dpop(gangway_dpop::ProofError::Malformed("header is not text"))
        })?),
        (Some(_), Some(_)) => return Err(AuthError::DpopManyProofs),
    };
    Ok(Presented {
        scheme,
        token,
        proof,
    })
}

/// The `htu` a proof for `path` must carry: `public_url` + `path`, or
/// (without `public_url`) the request's Host and `path`.
pub fn htu_for(cfg: &DpopConfig, headers: &HeaderMap, path: &str) -> Result<Htu, AuthError> {
    if let Some(base) = &cfg.public_url {
        let url = base
            .join(path)
            .map_err(|_| AuthError::DpopUnavailable("public_url cannot take this path".into()))?;
        return Ok(Htu::Exact(url));
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty())
        .ok_or(AuthError::Dpop(gangway_dpop::ProofError::Malformed(
            "no Host header to check htu against",
        )))?;
    Ok(Htu::HostAndPath {
        authority: host.to_string(),
        path: path.to_string(),
    })
}

/// Applies the DPoP rules to `identity` (the verified token of
/// `presented`), for a request `htm` to `htu`: on success, marks it
/// `dpop_bound` when a proof came with it.
pub async fn bind(
    cfg: &DpopConfig,
    replays: &Replays,
    presented: &Presented<'_>,
    identity: &mut Identity,
    htm: &str,
    htu: Result<Htu, AuthError>,
    now: u64,
) -> Result<(), AuthError> {
    match presented.scheme {
        Scheme::Bearer => {
            if identity.jkt.is_some() {
                return Err(AuthError::BoundTokenAsBearer);
            }
            if cfg.required {
                return Err(AuthError::DpopRequired);
            }
            identity.dpop_bound = false;
            Ok(())
        }
        Scheme::Dpop => {
            let jkt = identity.jkt.as_deref().ok_or(AuthError::DpopUnboundToken)?;
            let proof = presented.proof.ok_or(AuthError::DpopMissingProof)?;
            let window = cfg.iat_window.as_secs();
            let verified = gangway_dpop::check(
                proof,
                &Expected {
                    htm,
                    htu: htu?,
                    access_token: Some(presented.token),
                    now,
                    window,
                },
            )
            .map_err(AuthError::Dpop)?;
            if verified.thumbprint != jkt {
                return Err(AuthError::DpopKeyMismatch);
            }
            // Remembered for as long as the proof could be accepted: its
            // `iat` may be up to `window` ahead of now.
            let ttl = Duration::from_secs(2 * window + 1);
            replays
                .first_use(&verified.thumbprint, &verified.jti, ttl, now)
                .await?;
            identity.dpop_bound = true;
            Ok(())
        }
    }
}

/// Most proofs remembered in this process at once. A proof lives
/// `2 × window + 1` s (61 s by default), so this allows ~1,600 bound
/// requests a second on one relay; beyond it new proofs are refused (503,
/// "try again") rather than forgotten early.
pub const MAX_REMEMBERED: usize = 100_000;

/// The `jti`s of proofs already used: in Redis (`<prefix>:dpop:<hash>`,
/// `SET NX` with the proof's lifetime), so that a proof used at one relay
/// is refused at every other, and in this process (bounded), which is what
/// holds while Redis is out of reach or not configured.
pub struct Replays {
    shared: Option<Arc<Shared>>,
    local: Mutex<Local>,
}

#[derive(Default)]
struct Local {
    /// Hash of (thumbprint, jti) → when it may be forgotten (Unix s).
    seen: HashMap<[u8; 32], u64>,
    /// The same, oldest first, for forgetting.
    order: VecDeque<([u8; 32], u64)>,
}

impl Replays {
    pub fn new(shared: Option<Arc<Shared>>) -> Self {
        Self {
            shared,
            local: Mutex::default(),
        }
    }

    /// `Ok` the first time this key's `jti` is seen (within `ttl`),
    /// [`AuthError::DpopReplayed`] after.
    pub async fn first_use(
        &self,
        thumbprint: &str,
        jti: &str,
        ttl: Duration,
        now: u64,
    ) -> Result<(), AuthError> {
        let mut input = Vec::with_capacity(thumbprint.len() + 1 + jti.len());
        input.extend_from_slice(thumbprint.as_bytes());
        input.push(b'\n');
        input.extend_from_slice(jti.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        self.remember_here(hash, now + ttl.as_secs(), now)?;
        if let Some(shared) = &self.shared {
            use base64::Engine;
            let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash);
            // `None`: Redis is out of reach, and this relay decides alone.
            if let Some(false) = shared.first_use(&["dpop", &name], ttl).await {
                return Err(AuthError::DpopReplayed);
            }
        }
        Ok(())
    }

    fn remember_here(&self, hash: [u8; 32], until: u64, now: u64) -> Result<(), AuthError> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let Local { seen, order } = &mut *local;
        while let Some(&(h, exp)) = order.front() {
            if exp > now {
                break;
            }
            order.pop_front();
            if seen.get(&h) == Some(&exp) {
                seen.remove(&h);
            }
        }
        if seen.get(&hash).is_some_and(|&exp| exp > now) {
            return Err(AuthError::DpopReplayed);
        }
        if seen.len() >= MAX_REMEMBERED {
            return Err(AuthError::DpopUnavailable(
                "too many DPoP proofs in flight on this relay; try again in a minute".into(),
            ));
        }
        seen.insert(hash, until);
        order.push_back((hash, until));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gangway_dpop::ProofKey;
    use http::HeaderValue;

    const NOW: u64 = 1_800_000_000;
    const TOKEN: &str = "eyJ.token.sig";

    fn cfg() -> DpopConfig {
        DpopConfig {
            public_url: Some("https://relay.example.com".parse().unwrap()),
            required: false,
            iat_window: Duration::from_secs(30),
        }
    }

    fn id(jkt: Option<&str>) -> Identity {
        Identity {
            subject: "ada".into(),
            groups: vec![],
            expires_at: NOW + 60,
            jkt: jkt.map(str::to_string),
            dpop_bound: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    async fn run(
        cfg: &DpopConfig,
        r: &Replays,
        h: &HeaderMap,
        id: &mut Identity,
    ) -> Result<(), AuthError> {
        let p = presented(h)?;
        let htu = htu_for(cfg, h, "/v1/tunnel");
        bind(cfg, r, &p, id, "GET", htu, NOW).await
    }

    #[tokio::test]
    async fn the_rules_of_presentation() {
        let key = ProofKey::generate().unwrap();
        let url = "https://relay.example.com/v1/tunnel";
        let proof = || key.proof("GET", url, Some(TOKEN), None, NOW).unwrap();
        let r = Replays::new(None);
        let c = cfg();
        let code = |e: AuthError| e.code();

        // Bound token with a good proof: bound.
        let p = proof();
        let h = headers(&[("authorization", &format!("DPoP {TOKEN}")), ("dpop", &p)]);
        let mut who = id(Some(key.thumbprint()));
        run(&c, &r, &h, &mut who).await.unwrap();
        assert!(who.dpop_bound);
        // The same proof again: replayed.
        let e = run(&c, &r, &h, &mut id(Some(key.thumbprint())))
            .await
            .unwrap_err();
        assert_eq!(code(e), "dpop_replayed");
        // Bound token as Bearer; with DPoP but no proof; two proofs.
        let h = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
        let e = run(&c, &r, &h, &mut id(Some(key.thumbprint())))
            .await
            .unwrap_err();
        assert_eq!(code(e), "bound_token_as_bearer");
        let h = headers(&[("authorization", &format!("DPoP {TOKEN}"))]);
        let e = run(&c, &r, &h, &mut id(Some(key.thumbprint())))
            .await
            .unwrap_err();
        assert_eq!(code(e), "dpop_missing");
        let (p1, p2) = (proof(), proof());
        let h = headers(&[
            ("authorization", &format!("DPoP {TOKEN}")),
            ("dpop", &p1),
            ("dpop", &p2),
        ]);
        let e = run(&c, &r, &h, &mut id(Some(key.thumbprint())))
            .await
            .unwrap_err();
        assert_eq!(code(e), "dpop_many");
        // A proof from another key than the token's.
        let other = ProofKey::generate().unwrap();
        let p = other.proof("GET", url, Some(TOKEN), None, NOW).unwrap();
        let h = headers(&[("authorization", &format!("DPoP {TOKEN}")), ("dpop", &p)]);
        let e = run(&c, &r, &h, &mut id(Some(key.thumbprint())))
            .await
            .unwrap_err();
        assert_eq!(code(e), "dpop_key_mismatch");
        // An unbound token with the DPoP scheme.
        let p = proof();
        let h = headers(&[("authorization", &format!("DPoP {TOKEN}")), ("dpop", &p)]);
        let e = run(&c, &r, &h, &mut id(None)).await.unwrap_err();
        assert_eq!(code(e), "dpop_unbound_token");
        // Unbound Bearer: fine, unless required.
        let h = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
        let mut who = id(None);
        run(&c, &r, &h, &mut who).await.unwrap();
        assert!(!who.dpop_bound);
        let required = DpopConfig {
            required: true,
            ..cfg()
        };
        let e = run(&required, &r, &h, &mut id(None)).await.unwrap_err();
        assert_eq!(code(e), "dpop_required");
        // Other schemes.
        let h = headers(&[("authorization", &format!("Basic {TOKEN}"))]);
        assert_eq!(code(presented(&h).unwrap_err()), "malformed");
    }

    #[tokio::test]
    async fn without_public_url_the_host_header_gives_htu() {
        let key = ProofKey::generate().unwrap();
        let c = DpopConfig {
            public_url: None,
            ..cfg()
        };
        let r = Replays::new(None);
        let p = key
            .proof(
                "GET",
                "http://127.0.0.1:9/v1/tunnel",
                Some(TOKEN),
                None,
                NOW,
            )
            .unwrap();
        let auth = format!("DPoP {TOKEN}");
        let h = headers(&[
            ("authorization", &auth),
            ("dpop", &p),
            ("host", "127.0.0.1:9"),
        ]);
        run(&c, &r, &h, &mut id(Some(key.thumbprint())))
            .await
            .unwrap();
        let p = key
            .proof(
                "GET",
                "http://127.0.0.1:9/v1/tunnel",
                Some(TOKEN),
                None,
                NOW,
            )
            .unwrap();
        let h = headers(&[
            ("authorization", &auth),
            ("dpop", &p),
            ("host", "10.0.0.1:9"),
        ]);
        let e = run(&c, &r, &h, &mut id(Some(key.thumbprint())))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "dpop_htu");
    }

    #[test]
    fn the_local_memory_forgets_in_time_and_is_bounded() {
        let r = Replays::new(None);
        let h = |n: u32| {
            let mut a = [0u8; 32];
            a[..4].copy_from_slice(&n.to_be_bytes());
            a
        };
        r.remember_here(h(1), NOW + 10, NOW).unwrap();
        assert_eq!(
            r.remember_here(h(1), NOW + 10, NOW + 9).unwrap_err().code(),
            "dpop_replayed"
        );
        // Forgotten once its time is up.
        r.remember_here(h(1), NOW + 20, NOW + 10).unwrap();
        for n in 2..MAX_REMEMBERED as u32 + 1 {
            r.remember_here(h(n), NOW + 30, NOW + 10).unwrap();
        }
        let e = r.remember_here(h(0), NOW + 30, NOW + 10).unwrap_err();
        assert!(e.is_server_side(), "{e}");
        // Room again once the old ones lapse.
        r.remember_here(h(0), NOW + 60, NOW + 31).unwrap();
    }
}
