//! The relay's plain-HTTP API documents, as both ends read and write them
//! (behind the `serde` feature): `GET /.well-known/gangway` ([`Discovery`])
//! and `GET /v1/catalog` ([`Catalog`]).

use serde::{Deserialize, Serialize};

/// `GET /.well-known/gangway`: what an agent needs to sign in, from the
/// relay URL alone.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Discovery {
    /// The OIDC issuer whose tokens the relay accepts.
    pub issuer: String,
    /// The public client the agent signs in as.
    pub client_id: String,
    /// The audience (resource) the access token must be for.
    pub audience: String,
    /// Scopes to ask for.
    pub scopes: Vec<String>,
    /// The tunnel protocol version the relay speaks.
    pub protocol_version: u8,
    /// The relay's own version (`gangway-relay --version`), for `gangway
    /// doctor` to compare with the agent's; absent from relays before 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_version: Option<String>,
    /// DPoP proof algorithms the relay checks (RFC 9449; `["ES256"]`). An
    /// agent binds its tokens to its key only when the relay lists one it
    /// can make, so a relay that predates DPoP keeps getting bearer tokens.
    #[serde(default)]
    pub dpop_signing_alg_values_supported: Vec<String>,
}

/// Kind of a service: `http` services are proxied request by request (and
/// get HTTP error pages on refusal); `tcp` ones are raw byte streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// HTTP/1.1, proxied by the relay.
    Http,
    /// Any TCP protocol (SSH, git://), forwarded as bytes.
    Tcp,
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            ServiceKind::Http => "http",
            ServiceKind::Tcp => "tcp",
        })
    }
}

/// One service the caller may reach.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Service {
    /// The name a stream opens it by.
    pub name: String,
    /// How it is carried.
    pub kind: ServiceKind,
    /// What the user sees.
    pub display_name: String,
    /// The local port the agent suggests for it.
    pub local_port: u16,
}

/// `GET /v1/catalog`: who the caller is, as the relay verified it, and the
/// services their groups reach.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Catalog {
    /// The token's subject.
    pub subject: String,
    /// The caller's groups.
    pub groups: Vec<String>,
    /// The services the caller may reach.
    pub services: Vec<Service>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_lowercase_words_and_pad() {
        assert_eq!(
            serde_json::to_string(&ServiceKind::Http).unwrap(),
            "\"http\""
        );
        assert_eq!(format!("{:<5}|", ServiceKind::Tcp), "tcp  |");
        let c: Catalog = serde_json::from_str(
            r#"{"subject":"ann","groups":["dev"],"services":[{"name":"git","kind":"tcp","display_name":"Git","local_port":7999}]}"#,
        )
        .unwrap();
        assert_eq!(c.services[0].kind, ServiceKind::Tcp);
    }
}
