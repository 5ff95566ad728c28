//! The request target as policy judges it, and as the backend gets it.
//!
//! Route choice, rules and the audit line read a request only through a
//! [`Target`], and the upstream request carries [`Target::uri`]: what the
//! rules saw is what the backend gets. [`Target::new`] makes the one
//! canonical form, or refuses the target:
//!
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`,
//!   RFC 3986 §2.3) are decoded, in the path and in the query, and every
//!   other escape is written with upper-case hex (§6.2.2): `%61` is `a`,
//!   `%2f` is `%2F`;
//! - a path that a backend could read as something else is refused: an
//!   encoded `/` (`%2F`), a `\` (raw or `%5C`), a control character
//!   (`%00`-`%1F`, `%7F`), a bad escape (`%zz`), a `;` (Tomcat strips
//!   `;params` from segments, lighttpd does not), a double-encoded escape
//!   (`%252e`), a `.` or `..` segment or an empty one (`//`). Browsers and
//!   git never send these; servers disagree on what they mean (Tomcat's
//!   `/..;/`, nginx's `merge_slashes`), so the relay does not guess which
//!   reading the backend will make and refuses them instead of resolving;
//! - in the query, an encoded NUL is refused (git http-backend's C strings
//!   end there, so `service=git-receive-pack%00x` is receive-pack to it);
//!   anything else in the query is kept as it is apart from the escapes;
//! - a target that is not a path (`*`, `host:port`) is refused; an
//!   absolute-form target (`http://host/path`) is judged, and forwarded, as
//!   its path and query.
//!
//! The git service a request asks for ([`Target::names_git`]) is read from
//! the canonical path (a segment `git-receive-pack` / `git-upload-pack`)
//! and from every `service=` parameter, decoded as git decodes it (`%XX`
//! and `+`). Both are matched without regard to case: git http-backend
//! itself refuses `Git-Receive-Pack`, but a case-insensitive file system or
//! server might not, and reading too much as a push only ever refuses more.

use std::fmt::Write as _;

use http::{Method, Uri};

use crate::config::GitService;

/// Why a request target is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request target is not a path")]
    NotAPath,
    #[error("a '%' not followed by two hex digits")]
    BadEscape,
    #[error("an encoded '/' (%2F) in the path")]
    EncodedSlash,
    #[error("a '\\' in the path")]
    Backslash,
    #[error("a control character in the path")]
    ControlChar,
    #[error("an encoded NUL (%00) in the query")]
    NulInQuery,
    #[error("a ';' in the path")]
    PathParameter,
    #[error("a double-encoded '%' (%25XX) in the path")]
    DoubleEncoded,
    #[error("a '.' or '..' segment in the path")]
    DotSegment,
    #[error("an empty segment ('//') in the path")]
    EmptySegment,
}

/// One request's method and canonical target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The request method, e.g. "GET".
    pub method: Method,
    /// The canonical path: what routes match on, and the audit line shows.
    pub path: String,
    /// The canonical path and query: what `path_contains` matches on.
    pub path_and_query: String,
    /// The same, as the origin-form target sent upstream.
    pub uri: Uri,
    /// The git services the target names (in the path or `service=`).
    git: GitNames,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct GitNames {
    receive_pack: bool,
    upload_pack: bool,
}

impl GitNames {
    fn add(&mut self, name: &str) {
        if name.eq_ignore_ascii_case("git-receive-pack") {
            self.receive_pack = true;
        } else if name.eq_ignore_ascii_case("git-upload-pack") {
            self.upload_pack = true;
        }
    }
}

impl Target {
    /// The canonical target of a request with this method and URI, or why
    /// it is refused.
    pub fn new(method: &Method, uri: &Uri) -> Result<Self, TargetError> {
        let path = canonical_path(uri.path())?;
        let query = uri.query().map(canonical_query).transpose()?;
        let mut git = GitNames::default();
        for segment in path.split('/') {
            git.add(segment);
        }
        if let Some(q) = &query {
            for (name, value) in query_pairs(q) {
                if name == "service" {
                    git.add(&value);
                }
            }
        }
        let path_and_query = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        // Only unreserved characters were decoded, so this parses; a
        // target that somehow does not is refused, never replaced.
        let uri = path_and_query.parse().map_err(|_| TargetError::NotAPath)?;
        Ok(Self {
            method: method.clone(),
            path,
            path_and_query,
            uri,
            git,
        })
    }

    /// Whether the target asks for git service `svc`.
    pub fn names_git(&self, svc: GitService) -> bool {
        match svc {
            GitService::ReceivePack => self.git.receive_pack,
            GitService::UploadPack => self.git.upload_pack,
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// The escape at `bytes[i..]` (which starts with '%'), decoded.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let hi = hex(*bytes.get(i + 1)?)?;
    let lo = hex(*bytes.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

/// Appends byte `b` as canonical text: itself when unreserved, else `%XX`.
fn push_escaped(out: &mut String, b: u8) {
    if is_unreserved(b) {
        out.push(char::from(b));
    } else {
        let _ = write!(out, "%{b:02X}");
    }
}

/// The canonical form of a path, or why it is refused (see the module
/// comment). Also checks `path_prefix` and route prefixes in the config.
pub fn canonical_path(raw: &str) -> Result<String, TargetError> {
    if !raw.starts_with('/') {
        return Err(TargetError::NotAPath);
    }
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let d = escape_at(bytes, i).ok_or(TargetError::BadEscape)?;
                match d {
                    b'/' => return Err(TargetError::EncodedSlash),
                    b'\\' => return Err(TargetError::Backslash),
                    b';' => return Err(TargetError::PathParameter),
                    0..=0x1f | 0x7f => return Err(TargetError::ControlChar),
                    _ => push_escaped(&mut out, d),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(TargetError::Backslash),
            b';' => return Err(TargetError::PathParameter),
            0..=0x1f | 0x7f => return Err(TargetError::ControlChar),
            _ => {}
        }
        // Copy a run of ordinary bytes as they are (UTF-8 stays whole).
        let end = bytes[i..]
            .iter()
            .position(|b| matches!(b, b'%' | b'\\' | b';' | 0..=0x1f | 0x7f))
            .map_or(bytes.len(), |n| i + n);
        out.push_str(&raw[i..end]);
        i = end;
    }
    // A `%25` that a second decoding would turn into another escape.
    let o = out.as_bytes();
    if o.windows(5).any(|w| {
        w[0] == b'%' && w[1] == b'2' && w[2] == b'5' && hex(w[3]).is_some() && hex(w[4]).is_some()
    }) {
        return Err(TargetError::DoubleEncoded);
    }
    let segments: Vec<&str> = out[1..].split('/').collect();
    for (n, s) in segments.iter().enumerate() {
        if *s == "." || *s == ".." {
            return Err(TargetError::DotSegment);
        }
        // A trailing '/' leaves an empty last segment; that one is fine.
        if s.is_empty() && n + 1 < segments.len() {
            return Err(TargetError::EmptySegment);
        }
    }
    Ok(out)
}

/// The canonical form of a query: escapes normalised as in the path; a bad
/// escape is kept as it is (servers read it as a literal '%'), an encoded
/// NUL is refused.
fn canonical_query(raw: &str) -> Result<String, TargetError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(d) = escape_at(bytes, i) {
                if d == 0 {
                    return Err(TargetError::NulInQuery);
                }
                push_escaped(&mut out, d);
                i += 3;
                continue;
            }
        }
        let end = bytes[i + 1..]
            .iter()
            .position(|b| *b == b'%')
            .map_or(bytes.len(), |n| i + 1 + n);
        out.push_str(&raw[i..end]);
        i = end;
    }
    Ok(out)
}

/// Escapes in `text` (a `path_contains` or `path_prefix` from the config)
/// written as a canonical target would have them; `None` when `text` has a
/// bad escape.
pub fn canonical_text(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            push_escaped(&mut out, escape_at(bytes, i)?);
            i += 3;
        } else {
            let end = bytes[i + 1..]
                .iter()
                .position(|b| *b == b'%')
                .map_or(bytes.len(), |n| i + 1 + n);
            out.push_str(&text[i..end]);
            i = end;
        }
    }
    Some(out)
}

/// The query's `name=value` pairs, each decoded as a form decoder (and git
/// http-backend) does: `%XX` is the byte, `+` a space, a bad escape itself.
/// Pairs are split on '&' and, as some CGI libraries do, ';'.
fn query_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split(['&', ';']).filter(|p| !p.is_empty()).map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        (form_decode(n), form_decode(v))
    })
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let Some(d) = escape_at(bytes, i) {
                    out.push(d);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Result<Target, TargetError> {
        let uri: Uri = uri.parse().expect("a URI the http crate takes");
        Target::new(&Method::GET, &uri)
    }

    /// Input → canonical path and query.
    #[test]
    fn canonical_forms() {
        let table = [
            ("/", "/"),
            (
                "/rest/api/1.0/projects?limit=5",
                "/rest/api/1.0/projects?limit=5",
            ),
            (
                "/scm/p/r.git/git-receive-p%61ck",
                "/scm/p/r.git/git-receive-pack",
            ),
            (
                "/scm/p/r.git/git%2Dreceive%2dpack",
                "/scm/p/r.git/git-receive-pack",
            ),
            ("/%7Euser/%41%5a%30%5F%2E", "/~user/AZ0_."),
            ("/a%20b/%c3%a9", "/a%20b/%C3%A9"),
            ("/a%3fb", "/a%3Fb"),
            ("/dir/", "/dir/"),
            ("/é/ü", "/é/ü"),
            (
                "/r.git/info/refs?service=git-receive-p%61ck",
                "/r.git/info/refs?service=git-receive-pack",
            ),
            ("/s?q=100%25&x=a+b&y=%2f%zz", "/s?q=100%25&x=a+b&y=%2F%zz"),
            ("/s?", "/s?"),
            ("/a/b..c/.d/..e", "/a/b..c/.d/..e"),
            ("http://confluence.example.com/wiki?x=1", "/wiki?x=1"),
            ("http://confluence.example.com", "/"),
        ];
        for (input, want) in table {
            let t = target(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(t.path_and_query, want, "{input}");
            assert_eq!(t.uri.to_string(), want, "{input}");
            assert_eq!(Some(t.path.as_str()), want.split('?').next(), "{input}");
            // Canonical forms are fixed points.
            assert_eq!(target(want).unwrap(), t, "{input}");
        }
    }

    /// Input → refusal.
    #[test]
    fn refusals() {
        use TargetError::*;
        let table = [
            ("*", NotAPath),
            ("/a/../b", DotSegment),
            ("/a/..", DotSegment),
            ("/..", DotSegment),
            ("/a/./b", DotSegment),
            ("/a/%2e%2E/b", DotSegment),
            ("/a/.%2e", DotSegment),
            ("//a", EmptySegment),
            ("/a//b", EmptySegment),
            ("/a/%2Fb", EncodedSlash),
            ("/a%2fb", EncodedSlash),
            ("/a%5Cb", Backslash),
            ("/a\\b", Backslash),
            ("/a%00", ControlChar),
            ("/a%0d%0aSet-Cookie:x", ControlChar),
            ("/a%7f", ControlChar),
            ("/a%zz", BadEscape),
            ("/a%4", BadEscape),
            ("/a%", BadEscape),
            ("/a;jsessionid=1/b", PathParameter),
            ("/a%3bb", PathParameter),
            ("/a%252e%252e/b", DoubleEncoded),
            ("/a%25%32%65", DoubleEncoded),
            ("/r.git/info/refs?service=git-receive-pack%00", NulInQuery),
        ];
        for (input, want) in table {
            match input.parse::<Uri>() {
                Ok(uri) => assert_eq!(Target::new(&Method::GET, &uri), Err(want), "{input}"),
                // The http crate refuses some of these itself (hyper
                // answers 400); the canonicaliser must refuse them too.
                Err(_) => {
                    let path = input.split('?').next().unwrap();
                    assert_eq!(canonical_path(path).err(), Some(want), "{input}");
                }
            }
        }
    }

    #[test]
    fn git_services_from_the_path_or_the_service_parameter() {
        let names = |uri: &str| {
            let t = target(uri).unwrap();
            (
                t.names_git(GitService::ReceivePack),
                t.names_git(GitService::UploadPack),
            )
        };
        assert_eq!(names("/r.git/git-receive-pack"), (true, false));
        assert_eq!(names("/r.git/git-upload-pack"), (false, true));
        assert_eq!(names("/r.git/Git-Receive-Pack"), (true, false));
        assert_eq!(names("/r.git/git-receive-p%61ck"), (true, false));
        assert_eq!(names("/r.git/git-receive-pack/"), (true, false));
        assert_eq!(
            names("/r.git/info/refs?service=git-receive-pack"),
            (true, false)
        );
        assert_eq!(
            names("/r.git/info/refs?service=git-receive-p%61ck"),
            (true, false)
        );
        assert_eq!(
            names("/r.git/info/refs?s%65rvice=git-receive-pack"),
            (true, false)
        );
        assert_eq!(
            names("/r.git/info/refs?service=git%2dreceive%2Dpack"),
            (true, false)
        );
        assert_eq!(
            names("/r.git/info/refs?service=GIT-RECEIVE-PACK"),
            (true, false)
        );
        assert_eq!(
            names("/r.git/info/refs?service=git-upload-pack&service=git-receive-pack"),
            (true, true),
            "git takes the last one; both count"
        );
        assert_eq!(
            names("/r.git/info/refs?x=1;service=git-receive-pack"),
            (true, false)
        );
        assert_eq!(
            names("/r.git/info/refs?service=git-upload-pack"),
            (false, true)
        );
        assert_eq!(names("/r.git/info/refs"), (false, false));
        assert_eq!(
            names("/r.git/info/refs?service=git-receive-pack+"),
            (false, false)
        );
        assert_eq!(
            names("/r.git/info/refs?myservice=git-receive-pack"),
            (false, false)
        );
        assert_eq!(names("/docs/git-receive-pack.html"), (false, false));
    }

    #[test]
    fn config_text_is_written_as_targets_are() {
        assert_eq!(
            canonical_text("git-receive-pack").as_deref(),
            Some("git-receive-pack")
        );
        assert_eq!(canonical_text("p%61ck").as_deref(), Some("pack"));
        assert_eq!(canonical_text("a%2fb").as_deref(), Some("a%2Fb"));
        assert_eq!(canonical_text("100%"), None);
    }
}
