//! `[[service]]`: the services reachable through the relay, each with its
//! kind, backends and groups. The http-only keys are [`super::http`]'s.

use std::collections::HashSet;
use std::time::Duration;

use super::http::HttpSettings;
use super::raw::RawService;
use super::{ConfigError, Source};

/// How the relay carries a service's streams (the catalog's word for it).
pub use gangway_wire::api::ServiceKind;

/// One validated `[[service]]`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub display_name: String,
    pub kind: ServiceKind,
    pub local_port: u16,
    pub backends: Vec<String>,
    pub allow_groups: Option<Vec<String>>,
    pub connect_timeout: Duration,
    /// Settings of http services (defaults for tcp ones).
    pub http: HttpSettings,
    /// Only DPoP-bound tokens may use it (`require_dpop`).
    pub require_dpop: bool,
}

/// Validates every `[[service]]`; names must be unique.
pub(super) fn from_raw(
    raw: Vec<RawService>,
    src: &Source<'_>,
) -> Result<Vec<ServiceConfig>, ConfigError> {
    let mut services = Vec::new();
    let mut names = HashSet::new();
    for (i, s) in raw.into_iter().enumerate() {
        // An earlier service with this name had a valid one, so this
        // comes before the name's own check without changing any error.
        if !names.insert(s.name.clone()) {
            return Err(src.err(
                format!("service[{i}].name"),
                format!("{:?} is used twice", s.name),
            ));
        }
        let svc = ServiceConfig::from_raw(i, s, src)?;
        // Cookies on 127.0.0.1 are shared by every port: two services
        // must not set the same affinity cookie.
        let cookies = svc.http.affinity_cookie.iter();
        let cookies = cookies.chain(svc.http.routes.iter().flat_map(|r| &r.affinity_cookie));
        for c in cookies {
            if let Some(other) = services.iter().find(|o: &&ServiceConfig| {
                o.http.affinity_cookie.as_ref() == Some(c)
                    || o.http
                        .routes
                        .iter()
                        .any(|r| r.affinity_cookie.as_ref() == Some(c))
            }) {
                return Err(src.err(
                    format!("service[{i}].affinity_cookie"),
                    format!(
                        "gives cookie {c:?}, as service {:?} does; rename one",
                        other.name
                    ),
                ));
            }
        }
        services.push(svc);
    }
    Ok(services)
}

impl ServiceConfig {
    /// Validates `service[i]`.
    fn from_raw(i: usize, s: RawService, src: &Source<'_>) -> Result<Self, ConfigError> {
        let at = |k: &str| format!("service[{i}].{k}");
        if gangway_wire::OpenStream::new(&s.name).is_err() {
            return Err(src.err(
                at("name"),
                format!(
                    "{:?} must be 1-64 characters of a-z, 0-9, '.', '_', '-'",
                    s.name
                ),
            ));
        }
        let kind = match s.kind.as_str() {
            "http" => ServiceKind::Http,
            "tcp" => ServiceKind::Tcp,
            other => {
                return Err(src.err(at("kind"), format!("{other:?} is not \"http\" or \"tcp\"")))
            }
        };
        check_backends(src, &at("backends"), &s.backends)?;
        if s.connect_timeout_secs == 0 {
            return Err(src.err(at("connect_timeout_secs"), "must be at least 1"));
        }
        let http = HttpSettings::from_raw(i, kind, &s, src)?;
        Ok(ServiceConfig {
            display_name: s.display_name.unwrap_or_else(|| s.name.clone()),
            name: s.name,
            kind,
            local_port: s.local_port,
            backends: s.backends,
            allow_groups: s.allow_groups,
            connect_timeout: Duration::from_secs(s.connect_timeout_secs),
            http,
            require_dpop: s.require_dpop,
        })
    }
}

/// At least one backend, each `host:port` with a non-zero port.
pub(super) fn check_backends(
    src: &Source<'_>,
    key: &str,
    backends: &[String],
) -> Result<(), ConfigError> {
    if backends.is_empty() {
        return Err(src.err(key, "must list at least one backend"));
    }
    for (j, b) in backends.iter().enumerate() {
        let ok = b
            .rsplit_once(':')
            .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
            .unwrap_or(false);
        if !ok {
            return Err(src.err(format!("{key}[{j}]"), format!("{b:?} is not host:port")));
        }
    }
    Ok(())
}
