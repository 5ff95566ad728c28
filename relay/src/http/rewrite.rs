//! Header work at the proxy's edges, as pure functions: what goes upstream
//! (hop-by-hop headers out, spoofed identity out, forwarded and identity
//! headers in) and what comes back (`Location` and cookies pointed at the
//! local address, as Apache's `ProxyPassReverse` does).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use url::Url;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub const X_GANGWAY_USER: &str = "x-gangway-user";
pub const X_GANGWAY_GROUPS: &str = "x-gangway-groups";
pub const X_GANGWAY_ASSERTION: &str = "x-gangway-assertion";

/// What the relay knows about a request, for the upstream's headers.
pub struct Forwarded<'a> {
    /// The agent's address as the relay saw it.
    pub client_ip: &'a str,
    /// The Host the client used (the agent's local address).
    pub host: Option<&'a str>,
    pub user: &'a str,
    pub groups: &'a [String],
    pub assertion: &'a str,
    /// The relay's own affinity cookies, removed from what goes upstream.
    pub affinity_cookies: &'a [String],
}

/// Removes hop-by-hop headers (and those named in `Connection`), except the
/// upgrade pair when `keep_upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(keep_upgrade && n == header::UPGRADE) {
            headers.remove(n);
        }
    }
    for h in HOP_BY_HOP {
        if keep_upgrade && (*h == "connection" || *h == "upgrade") {
            continue;
        }
        headers.remove(*h);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Prepares a request's headers for the upstream.
pub fn upstream_request(headers: &mut HeaderMap, f: &Forwarded<'_>, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    // Identity and forwarding headers are ours alone: whatever the client
    // sent under these names is dropped, always; so are their underscore
    // spellings (`X_Gangway_User`), which CGI servers map to the same
    // variable (`HTTP_X_GANGWAY_USER`).
    let spoofable: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str().replace('_', "-");
            k.starts_with("x-gangway-") || k.starts_with("x-forwarded-") || k == "forwarded"
        })
        .cloned()
        .collect();
    for k in spoofable {
        headers.remove(k);
    }
    // hyper answers `Expect: 100-continue` to the client itself and streams
    // the body on at once.
    headers.remove(header::EXPECT);
    for name in f.affinity_cookies {
        remove_cookie(headers, name);
    }
    let set = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(headers, "x-forwarded-for", f.client_ip);
    set(headers, "x-forwarded-proto", "http");
    if let Some(host) = f.host {
        set(headers, "x-forwarded-host", host);
        let port = host.rsplit_once(':').map(|(_, p)| p).unwrap_or("80");
        set(headers, "x-forwarded-port", port);
    }
    set(headers, X_GANGWAY_USER, f.user);
    set(headers, X_GANGWAY_GROUPS, &f.groups.join(","));
    set(headers, X_GANGWAY_ASSERTION, f.assertion);
}

/// Value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split_once('=').is_none_or(|(k, _)| k != name))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// The affinity cookie naming backend `id`, for requests under `path`.
pub fn affinity_set_cookie(name: &str, id: &str, path: &str) -> String {
    format!("{name}={id}; Path={path}; HttpOnly; SameSite=Lax")
}

/// Rewrites a `Location`-style URL that points at one of `public` origins
/// or at the backend itself to the local address `local_host`.
pub fn rewrite_location(
    value: &str,
    public: &[Url],
    backend_addr: &str,
    local_host: &str,
) -> Option<String> {
    let url = Url::parse(value).ok()?;
    let same_origin = |u: &Url| {
        u.scheme() == url.scheme()
            && u.host_str() == url.host_str()
            && u.port_or_known_default() == url.port_or_known_default()
    };
    let is_backend = url.scheme() == "http"
        && url
            .host_str()
            .zip(url.port_or_known_default())
            .is_some_and(|(h, p)| format!("{h}:{p}") == backend_addr);
    if !(public.iter().any(same_origin) || is_backend) {
        return None;
    }
    let mut out = format!("http://{local_host}{}", url.path());
    if let Some(q) = url.query() {
        out.push('?');
        out.push_str(q);
    }
    if let Some(f) = url.fragment() {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
}

/// Rewrites a `Set-Cookie` value for the local address: drops a `Domain`
/// naming a public host (so the cookie binds to 127.0.0.1), and when
/// `strip_secure` drops `Secure` (plain http locally), turning
/// `SameSite=None` (which requires Secure) into `Lax`.
pub fn rewrite_set_cookie(value: &str, public_hosts: &[String], strip_secure: bool) -> String {
    let mut parts = value.split(';').map(str::trim);
    let mut out = vec![parts.next().unwrap_or("").to_string()];
    for attr in parts {
        let lower = attr.to_ascii_lowercase();
        if let Some(domain) = lower.strip_prefix("domain=") {
            let d = domain.trim_start_matches('.');
            if public_hosts
                .iter()
                .any(|h| h == d || h.ends_with(&format!(".{d}")))
            {
                continue;
            }
        }
        if strip_secure && lower == "secure" {
            continue;
        }
        if strip_secure && lower == "samesite=none" {
            out.push("SameSite=Lax".into());
            continue;
        }
        if !attr.is_empty() {
            out.push(attr.to_string());
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOKIES: &[String] = &[];

    fn fwd<'a>(groups: &'a [String], cookies: &'a [String]) -> Forwarded<'a> {
        Forwarded {
            client_ip: "203.0.113.7",
            host: Some("127.0.0.1:8090"),
            user: "alice",
            groups,
            assertion: "a.b.c",
            affinity_cookies: cookies,
        }
    }

    #[test]
    fn spoofed_identity_and_forwarding_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-gangway-user", "admin".parse().unwrap());
        h.insert("X-Gangway-Groups", "admins".parse().unwrap());
        h.insert("x-gangway-anything", "x".parse().unwrap());
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.insert("forwarded", "for=1.2.3.4".parse().unwrap());
        h.insert("connection", "keep-alive, x-custom".parse().unwrap());
        h.insert("x-custom", "hop".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(
            "cookie",
            "JSESSIONID=abc.node1; GANGWAY_ROUTE_c=1234abcd; GANGWAY_ROUTE_c_s=1"
                .parse()
                .unwrap(),
        );
        h.insert("authorization", "Basic dTpw".parse().unwrap());
        let groups = vec!["developers".to_string(), "readers".to_string()];
        let ours = [
            "GANGWAY_ROUTE_c".to_string(),
            "GANGWAY_ROUTE_c_s".to_string(),
        ];
        upstream_request(&mut h, &fwd(&groups, &ours), false);
        assert_eq!(h["x-gangway-user"], "alice");
        assert_eq!(h["x-gangway-groups"], "developers,readers");
        assert_eq!(h["x-gangway-assertion"], "a.b.c");
        assert!(h.get("x-gangway-anything").is_none());
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
        assert_eq!(h["x-forwarded-host"], "127.0.0.1:8090");
        assert_eq!(h["x-forwarded-port"], "8090");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("forwarded").is_none());
        assert!(h.get("x-custom").is_none() && h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["cookie"], "JSESSIONID=abc.node1");
        assert_eq!(
            h["authorization"], "Basic dTpw",
            "user credentials for the upstream pass"
        );
    }

    #[test]
    fn underscore_spellings_of_our_headers_are_dropped_too() {
        let mut h = HeaderMap::new();
        for name in [
            "x_gangway_user",
            "X_Gangway_Groups",
            "x-gangway_assertion",
            "x_forwarded_for",
            "X-Forwarded_Host",
        ] {
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "spoof".parse().unwrap(),
            );
        }
        h.insert("x_custom_header", "kept".parse().unwrap());
        upstream_request(&mut h, &fwd(&[], COOKIES), false);
        let left: Vec<_> = h.iter().filter(|(_, v)| *v == "spoof").collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(h["x_custom_header"], "kept");
        assert_eq!(h["x-gangway-user"], "alice");
    }

    #[test]
    fn upgrade_headers_survive_for_websockets() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        let groups = vec![];
        upstream_request(&mut h, &fwd(&groups, COOKIES), true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn locations_to_public_names_or_the_backend_come_home() {
        let public = vec![Url::parse("https://confluence.example.com").unwrap()];
        assert_eq!(
            rewrite_location(
                "https://confluence.example.com/display/X?a=1#top",
                &public,
                "10.0.0.5:8090",
                "127.0.0.1:8090"
            )
            .as_deref(),
            Some("http://127.0.0.1:8090/display/X?a=1#top")
        );
        assert_eq!(
            rewrite_location(
                "http://10.0.0.5:8090/login",
                &public,
                "10.0.0.5:8090",
                "127.0.0.1:8090"
            )
            .as_deref(),
            Some("http://127.0.0.1:8090/login")
        );
        assert_eq!(
            rewrite_location(
                "https://elsewhere.example.com/",
                &public,
                "10.0.0.5:8090",
                "h"
            ),
            None
        );
        assert_eq!(
            rewrite_location("http://confluence.example.com/", &public, "b:1", "h"),
            None,
            "scheme differs"
        );
        assert_eq!(rewrite_location("/relative", &public, "b:1", "h"), None);
    }

    #[test]
    fn cookies_lose_public_domain_and_secure() {
        let hosts = vec!["confluence.example.com".to_string()];
        assert_eq!(
            rewrite_set_cookie(
                "seraph=abc; Domain=confluence.example.com; Path=/; Secure; HttpOnly",
                &hosts,
                true
            ),
            "seraph=abc; Path=/; HttpOnly"
        );
        assert_eq!(
            rewrite_set_cookie(
                "a=b; domain=.example.com; SameSite=None; Secure",
                &hosts,
                true
            ),
            "a=b; SameSite=Lax"
        );
        assert_eq!(
            rewrite_set_cookie("a=b; Domain=other.org; Secure", &hosts, false),
            "a=b; Domain=other.org; Secure"
        );
    }

    #[test]
    fn cookie_lookup() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; GANGWAY_ROUTE=abcd1234".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        assert_eq!(cookie(&h, "GANGWAY_ROUTE").as_deref(), Some("abcd1234"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
