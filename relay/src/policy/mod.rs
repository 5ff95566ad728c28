//! Every allow/deny decision the relay makes, and nothing else.
//!
//! - whether a caller's token is still live ([`token_expired`]),
//! - which services a caller's groups reach ([`may_use`]; also what the
//!   catalog lists),
//! - for a tunnel stream, whether the caller may open a service now
//!   ([`authorize_service`]),
//! - for an http request, which route serves it and whether the service, the
//!   route and the service's rules let it through ([`authorize_request`]).
//!
//! Pure functions over validated config, the caller's [`Identity`] and the
//! request's [`Target`]: no I/O and no clock (callers pass `now`), so every
//! decision is tested here. A refusal comes back as a typed denial that
//! borrows from the config; each edge words it for its audience (a tunnel
//! refusal for the agent, an error page for the browser).

pub mod target;

use std::time::Duration;

use http::Method;
pub use target::{canonical_path, canonical_text, Target, TargetError};

use crate::auth::Identity;
use crate::config::{RuleConfig, ServiceConfig};

/// Why a caller may not use a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceDenial {
    /// The access token has expired (beyond the leeway).
    Expired,
    /// None of the caller's groups is one the service allows.
    NotInGroups,
    /// The service takes only DPoP-bound tokens (`require_dpop`), and this
    /// one came without a proof of the agent's key.
    NotBound,
}

/// Why an http request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestDenial<'c> {
    /// The caller may not use the service at all.
    Service(ServiceDenial),
    /// The route serving the request allows other groups.
    Route { prefix: &'c str },
    /// A rule matched the request and the caller is not in its groups.
    Rule { reason: &'c str },
}

/// Whether a token that expires at `expires_at` (unix seconds) is past use
/// at `now`, allowing `leeway` for clock skew.
pub fn token_expired(expires_at: u64, leeway: Duration, now: u64) -> bool {
    expires_at.saturating_add(leeway.as_secs()) <= now
}

/// Whether a caller in `groups` may use `svc`; a service without
/// `allow_groups` is open to every signed-in user.
pub fn may_use(svc: &ServiceConfig, groups: &[String]) -> bool {
    match &svc.allow_groups {
        None => true,
        Some(allowed) => in_any(groups, allowed),
    }
}

/// May `identity` use `svc` at `now`? The token first, its binding to
/// the agent's key (for a `require_dpop` service), then the groups.
pub fn authorize_service(
    svc: &ServiceConfig,
    identity: &Identity,
    leeway: Duration,
    now: u64,
) -> Result<(), ServiceDenial> {
    if token_expired(identity.expires_at, leeway, now) {
        return Err(ServiceDenial::Expired);
    }
    if svc.require_dpop && !identity.dpop_bound {
        return Err(ServiceDenial::NotBound);
    }
    if !may_use(svc, &identity.groups) {
        return Err(ServiceDenial::NotInGroups);
    }
    Ok(())
}

/// Which of `svc`'s extra routes serves `path`, as an index into
/// `svc.http.routes` (kept longest prefix first); `None` means the
/// service's own backends, which serve "/". A prefix matches the path
/// itself and anything below it, never a longer name (`/synchrony` does not
/// match `/synchronyx`).
pub fn route(svc: &ServiceConfig, path: &str) -> Option<usize> {
    svc.http.routes.iter().position(|r| {
        path == r.prefix
            || path
                .strip_prefix(r.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
    })
}

/// Whether `rule` applies to a request: each of its conditions that is set
/// must hold, on the canonical target: methods (GET also matching HEAD,
/// which is a GET without the body), path prefix, path + query containing,
/// git service.
pub fn rule_matches(rule: &RuleConfig, target: &Target) -> bool {
    let method = target.method.as_str();
    let method_matches = |m: &String| {
        m.eq_ignore_ascii_case(method)
            || (target.method == Method::HEAD && m.eq_ignore_ascii_case("GET"))
    };
    rule.methods
        .as_ref()
        .is_none_or(|m| m.iter().any(method_matches))
        && rule
            .path_prefix
            .as_ref()
            .is_none_or(|p| target.path.starts_with(p.as_str()))
        && rule
            .path_contains
            .as_ref()
            .is_none_or(|c| target.path_and_query.contains(c.as_str()))
        && rule.git.is_none_or(|g| target.names_git(g))
}

/// May `identity` make this request to http service `svc` at `now`? In
/// order: the service ([`authorize_service`]), the route serving the target,
/// then every rule that matches it: a caller outside the groups of any of
/// them is refused (deny wins; the first such rule's reason is given). On
/// success, the route to use (as [`route`] gives it).
pub fn authorize_request<'c>(
    svc: &'c ServiceConfig,
    identity: &Identity,
    target: &Target,
    leeway: Duration,
    now: u64,
) -> Result<Option<usize>, RequestDenial<'c>> {
    authorize_service(svc, identity, leeway, now).map_err(RequestDenial::Service)?;
    let groups = &identity.groups;
    let route = route(svc, &target.path);
    if let Some(r) = route.map(|i| &svc.http.routes[i]) {
        if r.allow_groups.as_ref().is_some_and(|a| !in_any(groups, a)) {
            return Err(RequestDenial::Route { prefix: &r.prefix });
        }
    }
    let denied = svc
        .http
        .rules
        .iter()
        .find(|r| rule_matches(r, target) && !in_any(groups, &r.allow_groups));
    if let Some(rule) = denied {
        return Err(RequestDenial::Rule {
            reason: &rule.reason,
        });
    }
    Ok(route)
}

fn in_any(groups: &[String], allowed: &[String]) -> bool {
    groups.iter().any(|g| allowed.contains(g))
}

#[cfg(test)]
mod tests;
