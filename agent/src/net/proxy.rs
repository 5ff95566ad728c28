//! Which proxy (if any) a connection goes through, and the failures a proxy
//! causes, said plainly.
//!
//! The decision is hyper-util's [`Matcher`] — the code reqwest itself uses
//! for `HTTPS_PROXY` & co., with curl's `NO_PROXY` rules (comma list, domain
//! suffix, leading dot, `*`, IP addresses and CIDR ranges) — fed from an
//! explicit setting or from the environment, plus the one rule of our own:
//! loopback is never proxied.
//!
//! Where the values come from, first found wins:
//! 1. an explicit setting ([`ProxySetting`]): a URL, or `direct` (or an
//!    empty value) for no proxy at all;
//! 2. for `https://` destinations `HTTPS_PROXY`, `https_proxy`, then
//!    `ALL_PROXY`, `all_proxy`; for `http://` ones `http_proxy` (lower case
//!    only, as curl: `HTTP_PROXY` can be set by a web server's client in CGI),
//!    then `ALL_PROXY`, `all_proxy`.
//!
//! `NO_PROXY` (or `no_proxy`) applies to both.

use std::fmt;

use hyper_util::client::proxy::matcher::Matcher;
use url::Url;

/// The default port of an `http://` proxy given without one (as curl,
/// reqwest and hyper-util assume for the scheme).
const DEFAULT_PORT: u16 = 80;

/// A proxy's URL. The credentials it may carry (`http://user:pass@host:port`)
/// are never shown: `Display` and `Debug` give `http://host:port`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// As given, credentials included: only for the matcher and reqwest.
    raw: String,
    host: String,
    port: u16,
    credentials: bool,
}

impl ProxyUrl {
    /// Parses `s` as an `http://` proxy URL; `assume_http` allows a value
    /// without a scheme (`proxy.example.com:3128`), as the environment
    /// variables are often written.
    pub fn parse(s: &str, assume_http: bool) -> Result<Self, String> {
        let s = s.trim();
        let with_scheme;
        let text = if assume_http && !s.contains("://") {
            with_scheme = format!("http://{s}");
            with_scheme.as_str()
        } else {
            s
        };
        // Never echo the value itself: it may carry a password.
        let url = Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(
                    "an https:// proxy (TLS to the proxy) is not supported; use http://HOST:PORT \
                     (the connection to the relay is TLS inside the proxy's tunnel anyway)"
                        .into(),
                )
            }
            s if s.starts_with("socks") => {
                return Err(format!(
                    "a {s}:// proxy is not supported; Gangway speaks HTTP CONNECT: use http://HOST:PORT"
                ))
            }
            other => {
                return Err(format!(
                    "scheme {other:?} is not supported; use http://HOST:PORT"
                ))
            }
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("it names no host")?
            .to_string();
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("a proxy URL has no path or query: use http://HOST:PORT".into());
        }
        let credentials = !url.username().is_empty() || url.password().is_some();
        Ok(ProxyUrl {
            raw: url.as_str().to_string(),
            port: url.port().unwrap_or(DEFAULT_PORT),
            host,
            credentials,
        })
    }

    /// Host (bracketed if IPv6) and port to connect to.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the URL carries a user name (and password) for the proxy.
    pub fn has_credentials(&self) -> bool {
        self.credentials
    }

    /// The URL with its credentials: for reqwest's proxy settings only.
    pub(crate) fn expose(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ProxyUrl({self}{})",
            if self.credentials {
                ", with credentials"
            } else {
                ""
            }
        )
    }
}

/// An explicit `proxy` setting: a proxy, or none at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxySetting {
    /// `proxy = "direct"` (or `""`): no proxy, whatever the environment says.
    Direct,
    Via(ProxyUrl),
}

impl ProxySetting {
    /// Parses a `proxy` value: `http://[USER:PASSWORD@]HOST:PORT`, or
    /// `direct` / an empty value for no proxy. The error is the reason, for
    /// a message that names the file and key.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("direct") {
            return Ok(ProxySetting::Direct);
        }
        ProxyUrl::parse(t, false).map(ProxySetting::Via)
    }
}

impl ProxySetting {
    /// The value with its credentials, to resolve settings with.
    pub(crate) fn expose(&self) -> &str {
        match self {
            ProxySetting::Direct => "direct",
            ProxySetting::Via(p) => p.expose(),
        }
    }
}

/// `direct`, or the proxy's URL without credentials.
impl fmt::Display for ProxySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySetting::Direct => f.write_str("direct"),
            ProxySetting::Via(p) => p.fmt(f),
        }
    }
}

/// An explicit setting and where it was set ("proxy in /home/a/.config/…").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplicitProxy {
    pub setting: ProxySetting,
    pub origin: String,
}

/// Where a proxy decision's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An explicit setting, e.g. "proxy in /etc/gangway/policy.toml".
    Setting(String),
    /// An environment variable, by name.
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Setting(s) => f.write_str(s),
            Origin::Env(v) => f.write_str(v),
        }
    }
}

/// How one destination is reached: what `gangway doctor` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct(Direct),
    /// Through `proxy` (HTTP CONNECT for https, absolute-form for http).
    Proxy {
        proxy: ProxyUrl,
        origin: Origin,
    },
}

/// Why a destination is reached directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direct {
    /// 127.0.0.0/8, ::1, `localhost`, `*.localhost`: never proxied.
    Loopback,
    /// A `NO_PROXY` entry matches the destination.
    NoProxy { entry: String, origin: &'static str },
    /// An explicit `proxy = "direct"`.
    Setting(String),
    /// No proxy is set for this scheme.
    Unset,
}

impl Route {
    /// The proxy, when there is one.
    pub fn proxy(&self) -> Option<&ProxyUrl> {
        match self {
            Route::Proxy { proxy, .. } => Some(proxy),
            Route::Direct(_) => None,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Proxy { proxy, origin } => write!(f, "via proxy {proxy} (from {origin})"),
            Route::Direct(Direct::Loopback) => f.write_str("direct (loopback)"),
            Route::Direct(Direct::NoProxy { entry, origin }) => {
                write!(f, "direct ({origin} matches {entry})")
            }
            Route::Direct(Direct::Setting(o)) => write!(f, "direct ({o} is \"direct\")"),
            Route::Direct(Direct::Unset) => f.write_str("direct (no proxy set)"),
        }
    }
}

/// The proxy environment variables, curl's names (the decision ignores
/// `HTTP_PROXY` in capitals, as curl does: CGI sets it from a request
/// header). Tests clear them all.
pub const VARIABLES: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Where the environment variables come from: the process's, or a map in
/// tests.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process's environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// The first of `names` set to a non-empty value, and its name.
fn first(env: &dyn EnvSource, names: &[&'static str]) -> Option<(&'static str, String)> {
    names
        .iter()
        .find_map(|n| env.var(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
}

/// A bad proxy environment variable: its name and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {name}: {reason}")]
pub struct BadProxyEnv {
    pub name: &'static str,
    pub reason: String,
}

/// The decision for every destination, made once from the settings.
#[derive(Debug)]
pub struct ProxyChoice {
    https: Option<(ProxyUrl, Origin)>,
    http: Option<(ProxyUrl, Origin)>,
    /// `NO_PROXY`'s value and which variable held it.
    no_proxy: Option<(&'static str, String)>,
    /// An explicit `direct`: where it was set.
    direct: Option<String>,
    matcher: Matcher,
}

impl ProxyChoice {
    /// No proxy at all (loopback tests, the demo).
    pub fn none() -> Self {
        ProxyChoice {
            https: None,
            http: None,
            no_proxy: None,
            direct: None,
            matcher: Matcher::builder().build(),
        }
    }

    /// The decision from `explicit` (wins) and the environment `env`.
    pub fn new(explicit: Option<&ExplicitProxy>, env: &dyn EnvSource) -> Result<Self, BadProxyEnv> {
        let from_env = |names: &[&'static str]| -> Result<Option<(ProxyUrl, Origin)>, BadProxyEnv> {
            match first(env, names) {
                None => Ok(None),
                Some((name, v)) => ProxyUrl::parse(&v, true)
                    .map(|p| Some((p, Origin::Env(name))))
                    .map_err(|reason| BadProxyEnv { name, reason }),
            }
        };
        let no_proxy = first(env, &["NO_PROXY", "no_proxy"]);
        let (https, http, direct) = match explicit {
            Some(ExplicitProxy {
                setting: ProxySetting::Direct,
                origin,
            }) => (None, None, Some(origin.clone())),
            Some(ExplicitProxy {
                setting: ProxySetting::Via(p),
                origin,
            }) => {
                let o = (p.clone(), Origin::Setting(origin.clone()));
                (Some(o.clone()), Some(o), None)
            }
            None => {
                let all = ["ALL_PROXY", "all_proxy"];
                let https = from_env(&["HTTPS_PROXY", "https_proxy"])?;
                let http = from_env(&["http_proxy"])?;
                let all = from_env(&all)?;
                (https.or(all.clone()), http.or(all), None)
            }
        };
        let mut b = Matcher::builder();
        if let Some((p, _)) = &https {
            b = b.https(p.expose());
        }
        if let Some((p, _)) = &http {
            b = b.http(p.expose());
        }
        if let Some((_, n)) = &no_proxy {
            b = b.no(n.as_str());
        }
        Ok(ProxyChoice {
            https,
            http,
            no_proxy,
            direct,
            matcher: b.build(),
        })
    }

    /// How `url` is reached.
    pub fn route(&self, url: &Url) -> Route {
        let host = url.host_str().unwrap_or_default();
        if is_loopback(host) {
            return Route::Direct(Direct::Loopback);
        }
        if let Some(o) = &self.direct {
            return Route::Direct(Direct::Setting(o.clone()));
        }
        let configured = match url.scheme() {
            "https" | "wss" => &self.https,
            "http" | "ws" => &self.http,
            _ => &None,
        };
        let Some((proxy, origin)) = configured else {
            return Route::Direct(Direct::Unset);
        };
        // The matcher decides (NO_PROXY); it sees the destination as the
        // http(s) URL the connection is for.
        let scheme = if matches!(url.scheme(), "https" | "wss") {
            "https"
        } else {
            "http"
        };
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let Ok(dst) = format!("{scheme}://{host}{port}/").parse::<http::Uri>() else {
            return Route::Direct(Direct::Unset);
        };
        if self.matcher.intercept(&dst).is_some() {
            return Route::Proxy {
                proxy: proxy.clone(),
                origin: origin.clone(),
            };
        }
        // Excluded by NO_PROXY: find the entry that matched, for the user.
        // Only NO_PROXY excludes once a proxy is set; should the matcher
        // ever decline for another reason, the connection is still direct
        // (it would be without this code too) and said as unset.
        let Some((var, list)) = self.no_proxy.as_ref() else {
            return Route::Direct(Direct::Unset);
        };
        let entry = list
            .split(',')
            .map(str::trim)
            .find(|e| {
                !e.is_empty()
                    && Matcher::builder()
                        .all(proxy.expose())
                        .no(*e)
                        .build()
                        .intercept(&dst)
                        .is_none()
            })
            .unwrap_or(list.as_str());
        Route::Direct(Direct::NoProxy {
            entry: entry.to_string(),
            origin: var,
        })
    }
}

/// 127.0.0.0/8, ::1, `localhost` and `*.localhost` (RFC 6761: always
/// loopback).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_matches(['[', ']']).trim_end_matches('.');
    let lower = h.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A failure caused by (or seen through) the proxy, in plain words: its
/// `Display` is the sentence, [`ProxyError::fix`] what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot reach the proxy at {proxy} ({why})")]
    Unreachable { proxy: ProxyUrl, why: String },
    #[error("the proxy at {proxy} asks for a user name and password")]
    AuthRequired { proxy: ProxyUrl },
    #[error("the proxy at {proxy} rejected the proxy user name or password")]
    AuthRejected { proxy: ProxyUrl },
    #[error("the proxy at {proxy} refused to connect to {target}{}", status.as_deref().map(|s| format!(" (it answered {s})")).unwrap_or_default())]
    Refused {
        proxy: ProxyUrl,
        target: String,
        status: Option<String>,
    },
    #[error("the proxy at {proxy} did not answer as an HTTP proxy ({why})")]
    Broken { proxy: ProxyUrl, why: String },
    #[error("the relay's certificate is not signed by an authority this computer trusts; the proxy at {proxy} probably inspects TLS")]
    Inspecting { proxy: ProxyUrl },
}

impl ProxyError {
    /// What to do about it.
    pub fn fix(&self) -> &'static str {
        match self {
            ProxyError::Unreachable { .. } => {
                "check the proxy setting (the proxy key or HTTPS_PROXY) and your network; ask IT if the proxy is down"
            }
            ProxyError::AuthRequired { .. } => {
                "put your proxy user name and password in the proxy URL: http://USER:PASSWORD@HOST:PORT (the proxy key or HTTPS_PROXY)"
            }
            ProxyError::AuthRejected { .. } => {
                "check the user name and password in the proxy URL (the proxy key or HTTPS_PROXY); ask IT if they are right"
            }
            ProxyError::Refused { .. } => {
                "the server may be down behind the proxy, or the proxy does not allow it: ask IT (the proxy must allow HTTP CONNECT to its host and port)"
            }
            ProxyError::Broken { .. } => {
                "check the proxy setting (the proxy key or HTTPS_PROXY): it must name an HTTP proxy, http://HOST:PORT"
            }
            ProxyError::Inspecting { .. } => {
                "ask IT for the proxy's CA certificate and have it added to this computer's trust store (or set ca_file / --ca-file to it)"
            }
        }
    }
}

/// The plain words for a failure of a connection that went through `proxy`
/// to `target`, if the chain from `e` shows one the proxy caused (a tunnel
/// reqwest failed to open, a certificate nobody trusts).
pub fn explain_chain(
    e: &(dyn std::error::Error + 'static),
    proxy: &ProxyUrl,
    target: &str,
) -> Option<ProxyError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        // hyper-util's `TunnelError` (what reqwest's CONNECT fails with) is
        // not exported, so it is known by its words; the unit test
        // `reqwests_tunnel_failures_are_recognised` pins them.
        let words = err.to_string();
        if let Some(what) = words.strip_prefix("tunnel error: ") {
            let proxy = proxy.clone();
            return Some(match what {
                "proxy authorization required" if proxy.has_credentials() => {
                    ProxyError::AuthRejected { proxy }
                }
                "proxy authorization required" => ProxyError::AuthRequired { proxy },
                "unsuccessful" => ProxyError::Refused {
                    proxy,
                    target: target.to_string(),
                    status: None,
                },
                "failed to create underlying connection" => ProxyError::Unreachable {
                    why: err
                        .source()
                        .map(unreachable_why)
                        .unwrap_or_else(|| what.to_string()),
                    proxy,
                },
                other => ProxyError::Broken {
                    why: other.to_string(),
                    proxy,
                },
            });
        }
        if is_unknown_issuer(err) {
            return Some(ProxyError::Inspecting {
                proxy: proxy.clone(),
            });
        }
        cur = err.source();
    }
    None
}

/// Whether `e` (or the io::Error wrapping it) is rustls' "unknown issuer".
pub(crate) fn is_unknown_issuer(e: &(dyn std::error::Error + 'static)) -> bool {
    let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
    });
    match tls {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => true,
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) => {
            matches!(
                o.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::UnknownIssuer)
            )
        }
        _ => false,
    }
}

/// A few words on why a connection to the proxy failed: refused, timed
/// out, its name does not resolve, or the error's own words.
pub(crate) fn unreachable_why(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut dns = false;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                _ => {}
            }
        }
        dns |= err.to_string().starts_with("dns error");
        cur = err.source();
    }
    if dns {
        "its name does not resolve".into()
    } else {
        crate::error::error_chain(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn explicit(s: &str) -> ExplicitProxy {
        ExplicitProxy {
            setting: ProxySetting::parse(s).unwrap(),
            origin: "proxy in config.toml".into(),
        }
    }

    #[test]
    fn proxy_urls_are_checked_and_never_show_credentials() {
        let p = ProxyUrl::parse("http://alice:s3cret@proxy.corp:3128", false).unwrap();
        assert_eq!(p.to_string(), "http://proxy.corp:3128");
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(!format!("{p:?}").contains("alice"));
        assert!(p.has_credentials());
        assert_eq!(p.port(), 3128);
        assert_eq!(ProxyUrl::parse("proxy.corp", true).unwrap().port(), 80);

        for (bad, why) in [
            ("https://proxy:3128", "https:// proxy"),
            ("socks5://proxy:1080", "socks5:// proxy is not supported"),
            ("http://proxy:3128/path", "no path"),
            ("http://", "not a URL"),
            ("ftp://proxy", "scheme \"ftp\""),
        ] {
            let e = ProxySetting::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        // The reason never repeats the value (it may hold a password).
        let e = ProxyUrl::parse("http://u:pw@[bad", false).unwrap_err();
        assert!(!e.contains("pw"), "{e}");
        assert_eq!(ProxySetting::parse("direct").unwrap(), ProxySetting::Direct);
        assert_eq!(ProxySetting::parse(" ").unwrap(), ProxySetting::Direct);
    }

    #[test]
    fn environment_variables_decide_as_curl() {
        let env = [
            ("HTTPS_PROXY", "http://proxy.corp:3128"),
            ("HTTP_PROXY", "http://cgi-injected:1"),
            ("NO_PROXY", "internal.corp, .git.corp,10.0.0.0/8"),
        ];
        let c = ProxyChoice::new(None, &env).unwrap();
        let r = c.route(&url("https://relay.corp:8443"));
        assert_eq!(
            r.to_string(),
            "via proxy http://proxy.corp:3128 (from HTTPS_PROXY)"
        );
        // Domain suffix and leading dot; CIDR; an unrelated look-alike.
        assert_eq!(
            c.route(&url("https://a.internal.corp")).to_string(),
            "direct (NO_PROXY matches internal.corp)"
        );
        assert_eq!(
            c.route(&url("https://git.corp")).to_string(),
            "direct (NO_PROXY matches .git.corp)"
        );
        assert_eq!(
            c.route(&url("https://10.1.2.3")).to_string(),
            "direct (NO_PROXY matches 10.0.0.0/8)"
        );
        assert!(c.route(&url("https://notinternal.corp")).proxy().is_some());
        // Upper-case HTTP_PROXY is not read (curl); http_proxy is.
        assert_eq!(
            c.route(&url("http://idp.corp")),
            Route::Direct(Direct::Unset)
        );
        let c = ProxyChoice::new(None, &[("http_proxy", "proxy:8080")]).unwrap();
        assert_eq!(
            c.route(&url("http://idp.corp")).to_string(),
            "via proxy http://proxy:8080 (from http_proxy)"
        );
        // ALL_PROXY serves both; NO_PROXY=* excludes everything.
        let c = ProxyChoice::new(None, &[("ALL_PROXY", "http://p:1")]).unwrap();
        assert!(c.route(&url("https://x.example")).proxy().is_some());
        assert!(c.route(&url("http://x.example")).proxy().is_some());
        let c = ProxyChoice::new(None, &[("ALL_PROXY", "http://p:1"), ("no_proxy", "*")]).unwrap();
        assert_eq!(
            c.route(&url("https://x.example")).to_string(),
            "direct (no_proxy matches *)"
        );
    }

    #[test]
    fn loopback_is_never_proxied() {
        let c = ProxyChoice::new(Some(&explicit("http://p:3128")), &[]).unwrap();
        for u in [
            "https://127.0.0.1:8443",
            "https://127.9.9.9",
            "https://[::1]:443",
            "https://localhost",
            "https://relay.localhost",
            "http://LOCALHOST:80",
        ] {
            assert_eq!(c.route(&url(u)), Route::Direct(Direct::Loopback), "{u}");
        }
        assert!(c.route(&url("https://128.0.0.1")).proxy().is_some());
    }

    #[test]
    fn an_explicit_setting_wins_over_the_environment() {
        let env = [("HTTPS_PROXY", "http://env-proxy:1")];
        let c = ProxyChoice::new(Some(&explicit("http://u:pw@set-proxy:3128")), &env).unwrap();
        // Nothing of the decision shows the credentials.
        let debug = format!("{c:?} {:?}", c.route(&url("https://relay.corp")));
        assert!(!debug.contains("pw") && !debug.contains("u:"), "{debug}");
        assert_eq!(
            c.route(&url("https://relay.corp")).to_string(),
            "via proxy http://set-proxy:3128 (from proxy in config.toml)"
        );
        let c = ProxyChoice::new(Some(&explicit("direct")), &env).unwrap();
        assert_eq!(
            c.route(&url("https://relay.corp")).to_string(),
            "direct (proxy in config.toml is \"direct\")"
        );
    }

    #[test]
    fn a_bad_variable_is_an_error_naming_it() {
        let e = ProxyChoice::new(None, &[("https_proxy", "socks5://p:1")]).unwrap_err();
        assert_eq!(e.name, "https_proxy");
        assert!(e
            .to_string()
            .starts_with("environment variable https_proxy: "));
        // Unless an explicit setting makes it irrelevant.
        assert!(ProxyChoice::new(
            Some(&explicit("direct")),
            &[("https_proxy", "socks5://p:1")]
        )
        .is_ok());
    }
}
