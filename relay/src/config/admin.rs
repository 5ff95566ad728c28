//! `[admin]`: the admin listener (Prometheus metrics and the admin API), on
//! an address of its own, never the public one; and who may use the API.
//! The raw section is beside its validated type, as in `shared.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Source};

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// Address of the admin listener, e.g. "127.0.0.1:9090" (port 0: any
    /// free port, logged at start). Metrics need no token there; the API
    /// does.
    pub(super) listen: String,
    /// File holding a local admin token (one line); callers presenting it
    /// as `Authorization: Bearer …` are admins. Compared in constant time.
    pub(super) token_file: Option<PathBuf>,
    /// Group (in the identity provider's groups claim) whose members'
    /// access tokens are accepted by the admin API.
    pub(super) admin_group: Option<String>,
}

/// The validated `[admin]` section.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub admin_group: Option<String>,
}

impl AdminConfig {
    /// Validates `[admin]`: an address unlike the public listener's, and
    /// at least one way to authenticate admins.
    pub(super) fn from_raw(
        raw: RawAdmin,
        public: SocketAddr,
        src: &Source<'_>,
    ) -> Result<Self, ConfigError> {
        let listen: SocketAddr = raw.listen.parse().map_err(|_| {
            src.err(
                "admin.listen",
                format!("{:?} is not an address like 127.0.0.1:9090", raw.listen),
            )
        })?;
        if listen.port() != 0 && listen.port() == public.port() {
            return Err(src.err(
                "admin.listen",
                "must not be the public listener's port: metrics and the admin API stay off the public port",
            ));
        }
        if let Some(g) = &raw.admin_group {
            if g.trim().is_empty() {
                return Err(src.err("admin.admin_group", "must not be empty"));
            }
        }
        if raw.token_file.is_none() && raw.admin_group.is_none() {
            return Err(src.err(
                "admin",
                "set token_file or admin_group (or both): the admin API needs a way to know its admins",
            ));
        }
        Ok(AdminConfig {
            listen,
            token_file: raw.token_file.as_deref().map(|p| src.resolve(p)),
            admin_group: raw.admin_group,
        })
    }
}
