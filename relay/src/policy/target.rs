//! The request target as policy judges it: method, path, and path + query.
//!
//! Route choice and rules read a request only through a [`Target`], so
//! whatever normalisation a target needs before it is judged belongs here,
//! in [`Target::new`], and nowhere else. Today it is taken verbatim from the
//! request line.

use http::{Method, Uri};

/// One request's method and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'r> {
    /// The request method, e.g. "GET".
    pub method: &'r str,
    /// The path alone: what routes match on.
    pub path: &'r str,
    /// The path and query ("/" when the request line has neither): what
    /// rules match on.
    pub path_and_query: &'r str,
}

impl<'r> Target<'r> {
    /// The target of a request with this method and URI.
    pub fn new(method: &'r Method, uri: &'r Uri) -> Self {
        Self {
            method: method.as_str(),
            path: uri.path(),
            path_and_query: uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_request_line_verbatim() {
        let uri: Uri = "/rest/api/1.0/projects?limit=5".parse().unwrap();
        let t = Target::new(&Method::POST, &uri);
        assert_eq!(t.method, "POST");
        assert_eq!(t.path, "/rest/api/1.0/projects");
        assert_eq!(t.path_and_query, "/rest/api/1.0/projects?limit=5");
    }

    #[test]
    fn an_absolute_uri_is_judged_on_its_path() {
        let uri: Uri = "http://confluence.example.com/wiki?x=1".parse().unwrap();
        let t = Target::new(&Method::GET, &uri);
        assert_eq!(t.path, "/wiki");
        assert_eq!(t.path_and_query, "/wiki?x=1");
    }
}
