//! Who may use the admin API: a caller presenting the local admin token
//! (`[admin] token_file`, compared in constant time as SHA-256 digests, so
//! neither its bytes nor its length leak through timing), or an access
//! token from the relay's identity provider, verified like any other
//! ([`crate::auth`]), whose groups include `[admin] admin_group`.

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

use crate::config::AdminConfig;
use crate::Relay;

/// The local admin token's digest (never the token itself).
pub struct Admins {
    token_digest: Option<[u8; 32]>,
    group: Option<String>,
}

impl std::fmt::Debug for Admins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admins")
            .field("token", &self.token_digest.map(|_| "[redacted]"))
            .field("group", &self.group)
            .finish()
    }
}

/// Why a caller is not an admin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("no bearer token")]
    Missing,
    #[error("the token is neither the admin token nor a valid access token: {0}")]
    Invalid(String),
    #[error("{subject} is not in the admin group")]
    NotAdmin { subject: String },
}

impl Denied {
    pub fn code(&self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid(_) => "invalid_token",
            Denied::NotAdmin { .. } => "not_admin",
        }
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, b).as_ref());
    out
}

impl Admins {
    /// Reads the token file (if any); a file with no token is an error.
    pub fn from_config(cfg: &AdminConfig) -> std::io::Result<Self> {
        let token_digest = match &cfg.token_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("admin.token_file {}: {e}", p.display()))
                })?;
                let token = text.trim();
                if token.len() < 16 {
                    return Err(std::io::Error::other(format!(
                        "admin.token_file {}: the token must be at least 16 characters",
                        p.display()
                    )));
                }
                Some(sha256(token.as_bytes()))
            }
            None => None,
        };
        Ok(Self {
            token_digest,
            group: cfg.admin_group.clone(),
        })
    }

    /// Who the caller is, if an admin: "local admin token" or the subject.
    pub async fn check(&self, relay: &Relay, bearer: Option<&str>) -> Result<String, Denied> {
        let token = bearer.ok_or(Denied::Missing)?;
        if let Some(want) = &self.token_digest {
            if bool::from(sha256(token.as_bytes()).ct_eq(want)) {
                return Ok("local admin token".into());
            }
        }
        let Some(group) = &self.group else {
            return Err(Denied::Invalid("not the admin token".into()));
        };
        let id = relay
            .verifier
            .verify(token)
            .await
            .map_err(|e| Denied::Invalid(e.to_string()))?;
        // A token bound to an agent's key (DPoP) is meant to travel with
        // proofs; as a bare bearer token it may be a copy.
        if id.jkt.is_some() {
            return Err(Denied::Invalid(
                crate::auth::AuthError::BoundTokenAsBearer.to_string(),
            ));
        }
        if id.groups.iter().any(|g| g == group) {
            Ok(id.subject)
        } else {
            Err(Denied::NotAdmin {
                subject: id.subject,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(token: &str) -> (tempfile::TempDir, AdminConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, token).unwrap();
        let cfg = AdminConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_file: Some(path),
            admin_group: None,
        };
        (dir, cfg)
    }

    #[test]
    fn the_token_is_kept_as_a_digest_and_never_shown() {
        let (_dir, c) = cfg("a-long-enough-admin-token\n");
        let admins = Admins::from_config(&c).unwrap();
        let shown = format!("{admins:?}");
        assert!(!shown.contains("a-long-enough"), "{shown}");
        assert_eq!(
            admins.token_digest,
            Some(sha256(b"a-long-enough-admin-token")),
            "trailing newline trimmed"
        );
    }

    #[test]
    fn a_short_token_is_refused_at_start() {
        let (_dir, c) = cfg("short");
        let e = Admins::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
    }
}
