use std::path::Path;
use std::time::Duration;

use http::{Method, Uri};

use super::*;
use crate::config::RelayConfig;

const LEEWAY: Duration = Duration::from_secs(30);
const NOW: u64 = 1_000_000;

/// A relay config with these `[[service]]` blocks.
fn with_services(services: &str) -> RelayConfig {
    let text = format!(
        r#"
        listen = "127.0.0.1:0"
        [tls]
        insecure_plaintext = true
        [identity]
        issuer = "https://login.example.com"
        audience = "relay"
        client_id = "gangway"
        {services}"#
    );
    RelayConfig::parse(Path::new("policy-test.toml"), &text).unwrap()
}

/// One http service with a route and a rule, one tcp service open to all.
fn config() -> RelayConfig {
    with_services(
        r#"
        [[service]]
        name = "confluence"
        kind = "http"
        local_port = 8090
        backends = ["c1:8090"]
        allow_groups = ["staff", "admins"]
        [[service.route]]
        prefix = "/synchrony"
        backends = ["s1:8091"]
        allow_groups = ["admins"]
        [[service.route]]
        prefix = "/synchrony/deep"
        backends = ["s2:8091"]
        [[service.rule]]
        path_contains = "/git-receive-pack"
        methods = ["post"]
        allow_groups = ["admins"]
        reason = "only admins may push"

        [[service]]
        name = "ssh"
        kind = "tcp"
        local_port = 7999
        backends = ["b1:7999"]
    "#,
    )
}

fn who(groups: &[&str], expires_at: u64) -> Identity {
    Identity {
        subject: "ada".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        expires_at,
        jkt: None,
        dpop_bound: false,
    }
}

fn request<'c>(
    svc: &'c ServiceConfig,
    id: &Identity,
    method: Method,
    uri: &str,
) -> Result<Option<usize>, RequestDenial<'c>> {
    let uri: Uri = uri.parse().unwrap();
    authorize_request(svc, id, &Target::new(&method, &uri).unwrap(), LEEWAY, NOW)
}

#[test]
fn tokens_expire_after_the_leeway() {
    assert!(!token_expired(NOW, LEEWAY, NOW));
    assert!(!token_expired(NOW - 29, LEEWAY, NOW));
    assert!(token_expired(NOW - 30, LEEWAY, NOW));
}

#[test]
fn services_without_groups_are_open_to_everyone() {
    let c = config();
    let ssh = c.service("ssh").unwrap();
    assert!(may_use(ssh, &[]));
    let confluence = c.service("confluence").unwrap();
    assert!(!may_use(confluence, &[]));
    assert!(!may_use(confluence, &["guests".into()]));
    assert!(may_use(confluence, &["guests".into(), "admins".into()]));
}

/// A `require_dpop` service refuses a token presented without a proof of
/// the agent's key (whatever its groups), and takes a bound one.
#[test]
fn a_require_dpop_service_takes_only_bound_tokens() {
    let mut c = config();
    let svc = c
        .services
        .iter_mut()
        .find(|s| s.name == "confluence")
        .unwrap();
    svc.require_dpop = true;
    let svc = c.service("confluence").unwrap();
    let mut id = who(&["staff"], NOW);
    assert_eq!(
        authorize_service(svc, &id, LEEWAY, NOW),
        Err(ServiceDenial::NotBound)
    );
    // Bound but expired: expiry is said first.
    id.dpop_bound = true;
    assert_eq!(authorize_service(svc, &id, LEEWAY, NOW), Ok(()));
    assert_eq!(
        authorize_service(svc, &who(&[], 0), LEEWAY, NOW),
        Err(ServiceDenial::Expired)
    );
    // Other services are not affected.
    let open = c.service("ssh").unwrap();
    assert_eq!(authorize_service(open, &who(&[], NOW), LEEWAY, NOW), Ok(()));
}

#[test]
fn a_service_checks_the_token_before_the_groups() {
    let c = config();
    let svc = c.service("confluence").unwrap();
    let now = NOW;
    assert_eq!(
        authorize_service(svc, &who(&[], 0), LEEWAY, now),
        Err(ServiceDenial::Expired)
    );
    assert_eq!(
        authorize_service(svc, &who(&["guests"], now), LEEWAY, now),
        Err(ServiceDenial::NotInGroups)
    );
    assert_eq!(
        authorize_service(svc, &who(&["staff"], now), LEEWAY, now),
        Ok(())
    );
}

#[test]
fn routes_match_whole_segments_longest_first() {
    let c = config();
    let svc = c.service("confluence").unwrap();
    let prefix = |path: &str| route(svc, path).map(|i| svc.http.routes[i].prefix.as_str());
    assert_eq!(prefix("/synchrony"), Some("/synchrony"));
    assert_eq!(prefix("/synchrony/v1/bayeux"), Some("/synchrony"));
    assert_eq!(prefix("/synchrony/deep/x"), Some("/synchrony/deep"));
    assert_eq!(prefix("/synchronyx"), None);
    assert_eq!(prefix("/wiki/synchrony"), None);
    assert_eq!(prefix("/"), None);
}

#[test]
fn rules_need_every_condition_they_set() {
    let c = config();
    let rule = &c.service("confluence").unwrap().http.rules[0];
    let t = |m: &Method, u: &str| {
        let uri: Uri = u.parse().unwrap();
        rule_matches(rule, &Target::new(m, &uri).unwrap())
    };
    assert!(t(&Method::POST, "/scm/p/r.git/git-receive-pack"));
    assert!(!t(&Method::GET, "/scm/p/r.git/git-receive-pack"));
    assert!(!t(&Method::POST, "/scm/p/r.git/git-upload-pack"));
    // path_contains also looks at the query.
    assert!(t(&Method::POST, "/scm/p/r.git/info?x=/git-receive-pack"));
}

#[test]
fn requests_go_service_then_route_then_rule() {
    let c = config();
    let svc = c.service("confluence").unwrap();
    let staff = who(&["staff"], NOW);
    let admin = who(&["admins"], NOW);
    assert_eq!(
        request(svc, &who(&["staff"], 0), Method::GET, "/"),
        Err(RequestDenial::Service(ServiceDenial::Expired))
    );
    assert_eq!(
        request(svc, &who(&["guests"], NOW), Method::GET, "/"),
        Err(RequestDenial::Service(ServiceDenial::NotInGroups))
    );
    assert_eq!(request(svc, &staff, Method::GET, "/wiki"), Ok(None));
    assert_eq!(
        request(svc, &staff, Method::GET, "/synchrony/v1"),
        Err(RequestDenial::Route {
            prefix: "/synchrony"
        })
    );
    assert_eq!(
        request(svc, &admin, Method::GET, "/synchrony/v1"),
        Ok(Some(1))
    );
    // A route without groups of its own adds no check.
    assert_eq!(
        request(svc, &staff, Method::GET, "/synchrony/deep/1"),
        Ok(Some(0))
    );
    assert_eq!(
        request(svc, &staff, Method::POST, "/r.git/git-receive-pack"),
        Err(RequestDenial::Rule {
            reason: "only admins may push"
        })
    );
    assert_eq!(
        request(svc, &admin, Method::POST, "/r.git/git-receive-pack"),
        Ok(None)
    );
}

/// A Bitbucket with overlapping rules: every matching rule applies.
fn bitbucket() -> RelayConfig {
    with_services(
        r#"
        [[service]]
        name = "bitbucket"
        kind = "http"
        local_port = 7990
        backends = ["b1:7990"]
        [[service.rule]]
        path_prefix = "/scm/"
        allow_groups = ["developers", "readers"]
        reason = "git needs developers or readers"
        [[service.rule]]
        git = "receive-pack"
        allow_groups = ["developers"]
        reason = "pushing needs developers"
        [[service.rule]]
        path_contains = "/secret/"
        methods = ["GET"]
        allow_groups = ["auditors"]
        reason = "secret needs auditors"
    "#,
    )
}

#[test]
fn every_matching_rule_applies_and_deny_wins() {
    let c = bitbucket();
    let svc = c.service("bitbucket").unwrap();
    let reader = who(&["readers"], NOW);
    let dev = who(&["developers"], NOW);
    let deny = |reason| Err(RequestDenial::Rule { reason });
    // The first rule allows readers; the second, which also matches, does not.
    for push in [
        "/scm/p/r.git/git-receive-pack",
        "/scm/p/r.git/git-receive-p%61ck",
        "/scm/p/r.git/info/refs?service=git-receive-pack",
        "/scm/p/r.git/info/refs?service=git-receive-p%61ck",
        "/scm/p/r.git/info/refs?service=git-upload-pack&service=git-receive-pack",
    ] {
        assert_eq!(
            request(svc, &reader, Method::POST, push),
            deny("pushing needs developers"),
            "{push}"
        );
        assert_eq!(request(svc, &dev, Method::POST, push), Ok(None), "{push}");
    }
    assert_eq!(
        request(
            svc,
            &reader,
            Method::GET,
            "/scm/p/r.git/info/refs?service=git-upload-pack"
        ),
        Ok(None)
    );
    assert_eq!(
        request(
            svc,
            &who(&["guests"], NOW),
            Method::GET,
            "/scm/p/r.git/info/refs"
        ),
        deny("git needs developers or readers")
    );
    // Developers pass the first two rules but not the third.
    assert_eq!(
        request(svc, &dev, Method::GET, "/scm/p/r.git/secret/x"),
        deny("secret needs auditors")
    );
    // HEAD is a GET without the body: a GET rule covers it.
    assert_eq!(
        request(svc, &dev, Method::HEAD, "/scm/p/r.git/secret/x"),
        deny("secret needs auditors")
    );
    assert_eq!(
        request(svc, &dev, Method::POST, "/scm/p/r.git/secret/x"),
        Ok(None)
    );
    // Rules see the canonical target.
    assert_eq!(
        request(svc, &dev, Method::GET, "/scm/p/r.git/s%65cret/x"),
        deny("secret needs auditors")
    );
}
