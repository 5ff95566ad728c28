//! The identity provider, the keychain and the token.

use std::time::Duration;

use crate::doctor::{Outcome, Probe};
use crate::error::error_chain;
use crate::keychain::Keychain;
use crate::signin::now_unix;

/// The issuer's OpenID configuration and its signing keys (JWKS) can be
/// fetched, with the trust settings the agent uses.
pub async fn provider(p: &Probe) -> Outcome {
    if p.environment().is_none() {
        return Outcome::blocked("config");
    }
    if let Err(piece) = p.relay_answer().await {
        return Outcome::blocked(piece);
    }
    let Some(d) = p.discovery().await else {
        return Outcome::blocked("relay version");
    };
    let egress = match p.egress() {
        Ok(t) => t,
        Err(e) => return Outcome::fail(e, "fix the environment's ca_file or proxy"),
    };
    let http = match egress
        .http_client()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(h) => h,
        Err(e) => return Outcome::fail(error_chain(&e), "report this with `gangway bugreport`"),
    };
    let issuer = d.issuer.trim_end_matches('/');
    let fix =
        "the identity provider cannot be reached from here: check your network or proxy; ask IT";
    let config_url = format!("{issuer}/.well-known/openid-configuration");
    let config: serde_json::Value = match get_json(&http, &config_url).await {
        Ok(v) => v,
        Err(e) => return Outcome::fail(format!("OpenID configuration of {issuer}: {e}"), fix),
    };
    if config["issuer"].as_str().map(|s| s.trim_end_matches('/')) != Some(issuer) {
        return Outcome::fail(
            format!("{config_url} names another issuer ({})", config["issuer"]),
            "the relay's identity settings do not match the provider: tell IT",
        );
    }
    let Some(jwks_url) = config["jwks_uri"].as_str() else {
        return Outcome::fail(
            format!("{config_url} has no jwks_uri"),
            "the provider publishes no signing keys: tell IT",
        );
    };
    match get_json(&http, jwks_url).await {
        Ok(jwks) => {
            let n = jwks["keys"].as_array().map_or(0, Vec::len);
            if n == 0 {
                Outcome::fail(
                    format!("{jwks_url} lists no keys"),
                    "the provider publishes no signing keys: tell IT",
                )
            } else {
                Outcome::pass(format!("issuer {issuer}; {n} signing key(s) at {jwks_url}"))
            }
        }
        Err(e) => Outcome::fail(format!("signing keys at {jwks_url}: {e}"), fix),
    }
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<serde_json::Value, String> {
    let resp = http.get(url).send().await.map_err(|e| error_chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    resp.json().await.map_err(|e| format!("not JSON: {e}"))
}

/// The OS keychain answers.
pub async fn keychain(p: &Probe) -> Outcome {
    let Some(env) = p.environment() else {
        return Outcome::blocked("config");
    };
    let k = Keychain::new(p.inputs.store.clone(), &env.relay);
    match tokio::time::timeout(Duration::from_secs(10), k.run(|k| k.probe())).await {
        Ok(Ok(())) => Outcome::pass(format!("reachable ({})", store_name())),
        Ok(Err(e)) => Outcome::fail(
            format!("cannot use the OS keychain: {}", error_chain(&e)),
            keychain_fix(),
        ),
        Err(_) => Outcome::fail(
            "the OS keychain did not answer within 10 s (locked, or waiting for a password?)",
            keychain_fix(),
        ),
    }
}

fn store_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "macOS Keychain"
    } else if cfg!(windows) {
        "Windows Credential Manager"
    } else {
        "Secret Service"
    }
}

fn keychain_fix() -> &'static str {
    if cfg!(any(target_os = "macos", windows)) {
        "unlock your login keychain (sign out and in again), then retry"
    } else {
        "start and unlock a keyring (GNOME Keyring or KWallet) in your desktop session"
    }
}

/// A usable access token: who it names, its groups and when it expires
/// (read without verifying; the token itself is never shown), and whether
/// the relay accepts it.
pub async fn token(p: &Probe) -> Outcome {
    let Some(env) = p.environment() else {
        return Outcome::blocked("config");
    };
    let t = match p.token().await {
        Ok(t) => t,
        Err(e) => {
            return Outcome::fail(
                format!("no usable sign-in for {}: {e}", env.name),
                format!("sign in: `{}`", p.login_hint()),
            )
        }
    };
    let claims = p.claims().await.unwrap_or_default();
    let who = claims
        .preferred_username
        .clone()
        .or(claims.sub.clone())
        .unwrap_or_else(|| "(no subject in the token)".into());
    let mut groups = claims.groups.clone().unwrap_or_default();
    let expiry = match t.expires_at.or(claims.exp) {
        Some(exp) => {
            let now = now_unix();
            if exp > now {
                format!(
                    "expires {} (in {} min)",
                    crate::status::clock(exp),
                    (exp - now).div_ceil(60)
                )
            } else {
                format!("expired at {}", crate::status::clock(exp))
            }
        }
        None => "expiry unknown".into(),
    };
    let source = if p.inputs.fixed_token.is_some() {
        "GANGWAY_TOKEN"
    } else {
        "the keychain"
    };
    let bound = match p.binding().await {
        Some(b @ crate::dpop::TokenBinding::Bound { .. })
        | Some(b @ crate::dpop::TokenBinding::NotBound) => format!(", {}", b.describe()),
        Some(crate::dpop::TokenBinding::OtherKey) => {
            return Outcome::fail(
                format!(
                    "{who} from {source}: {}",
                    crate::dpop::TokenBinding::OtherKey.describe()
                ),
                format!("sign in again: `{}`", p.login_hint()),
            )
        }
        _ => String::new(),
    };
    let said = |groups: &[String], relay: &str| {
        format!(
            "{who} from {source}, groups [{}], {expiry}{bound}{relay}",
            groups.join(", ")
        )
    };
    if let Err(piece) = p.relay_answer().await {
        return Outcome::warn(
            said(&groups, "; the relay could not be asked"),
            format!("fix the `{piece}` check first"),
        );
    }
    match p.catalog().await {
        Ok(c) => {
            if !c.groups.is_empty() {
                groups = c.groups.clone();
            }
            Outcome::pass(said(
                &groups,
                &format!("; the relay accepts it as {}", c.subject),
            ))
        }
        Err(e) => Outcome::fail(
            format!("{}; the relay refuses it: {e}", said(&groups, "")),
            format!(
                "sign in again: `{}`; if that does not help, ask IT about your groups",
                p.login_hint()
            ),
        ),
    }
}
