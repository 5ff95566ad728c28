//! README claims about the relay's http services that no other test
//! proved (issue 12), each against real peers, through the real
//! `gangway-relay` and `gangway` binaries and the agent's local listener:
//!
//! - active health checks take a node that is up but answers `503` on its
//!   health path out, and bring it back ([`health_checks_take_a_503_node_out_and_bring_it_back`]);
//! - `balance = "least_conn"` ([`least_conn_sends_new_requests_past_a_busy_node`]);
//! - another node is tried when sending fails, for a request that can be
//!   replayed only ([`a_failed_get_is_retried_on_another_node_and_a_post_is_not`]);
//! - `Content-Location` (and `Location` naming the node) rewriting
//!   ([`content_location_naming_a_public_url_or_the_node_comes_back_local`]);
//! - no size cap ([`a_64_mib_upload_reaches_the_backend_intact`]) and no read
//!   timeout ([`a_response_silent_past_every_timeout_still_arrives`]);
//! - every relay agrees on the affinity cookie
//!   ([`two_relays_honour_each_others_affinity_cookie`]);
//! - `X-Forwarded-Proto` and `-Port` name the local address
//!   ([`forwarded_proto_and_port_name_the_local_address`]).
//!
//! Each test asserts what the user sees (status, the relay's text, the
//! bytes) and what the backend saw (nginx's access log, or a CGI script's
//! own answer). The HTTP client keeps no cookies and no idle connections:
//! every request is a new local connection (a new tunnel stream) and says
//! exactly which cookies it presents.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gangway_tests::gangway::{
    http_service, relay_config_for_idp, AgentProcess, RelayProcess, TestCert,
};
use gangway_tests::peers::cgi::CgiServer;
use gangway_tests::peers::nginx::ConfluenceNode;
use gangway_tests::peers::oidc::{OidcProvider, CI_DEV, DEFAULT_AUDIENCE};
use gangway_tests::peers::process::poll;
use reqwest::{Client, Response, StatusCode};
use tempfile::TempDir;

/// The relay's affinity cookie of a service named `confluence` configured
/// with `affinity_cookie = "GANGWAY_ROUTE"`.
const ROUTE: &str = "GANGWAY_ROUTE_confluence";

/// How long a relay gets to act on health-check results it logs.
const HEALTH_WAIT: Duration = Duration::from_secs(20);

/// The provider, one relay serving `services`, and ci-dev's agent
/// listening for `service`. Fields drop in order: agent, relay, peers.
struct Relayed {
    _agent: AgentProcess,
    relay: RelayProcess,
    _idp: OidcProvider,
    _cert: TestCert,
    dir: TempDir,
    /// `http://<the agent's local address for the service>`.
    base: String,
    service: String,
}

impl Relayed {
    async fn start(service: &str, services: &str) -> Result<Self> {
        let idp = OidcProvider::start(DEFAULT_AUDIENCE, 60)?;
        let cert = TestCert::new()?;
        let dir = tempfile::tempdir()?;
        let config = relay_config_for_idp(dir.path(), &cert, &idp, services)?;
        let relay = RelayProcess::start(&config)?;
        let agent =
            AgentProcess::with_client_token(&idp, &relay, &cert, CI_DEV, dir.path(), &[service])
                .await?;
        let base = format!("http://{}", agent.addr(service));
        Ok(Self {
            _agent: agent,
            relay,
            _idp: idp,
            _cert: cert,
            dir,
            base,
            service: service.to_string(),
        })
    }

    /// [`client`] carrying the agent's door credential.
    fn client(&self, timeout: Duration) -> Result<Client> {
        client(timeout, &self._agent, &self.service)
    }

    /// Waits until the relay logs `what` ("backend marked down") for `node`.
    async fn wait_log(&mut self, what: &str, node: SocketAddr) -> Result<()> {
        let addr = node.to_string();
        self.relay
            .process
            .wait_line(&format!("{what} for {addr}"), HEALTH_WAIT, |l| {
                l.contains(what) && l.contains(&addr)
            })
            .await?;
        Ok(())
    }
}

/// An HTTP client as the tests here use it: no redirects followed, no
/// cookie store, a new connection for every request, and a deadline (a
/// hang is a failure, not a stuck test).
fn client(timeout: Duration, agent: &AgentProcess, service: &str) -> Result<Client> {
    Ok(Client::builder()
        .default_headers(agent.door_headers(service)?)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .build()?)
}

/// GET `url` presenting exactly `cookies` (none if empty).
async fn get(http: &Client, url: &str, cookies: &str) -> Result<Response> {
    let mut req = http.get(url);
    if !cookies.is_empty() {
        req = req.header("cookie", cookies);
    }
    Ok(req.send().await?)
}

/// The value the response sets for cookie `name`, if it sets one.
fn set_cookie(resp: &Response, name: &str) -> Option<String> {
    resp.headers().get_all("set-cookie").iter().find_map(|v| {
        let (k, rest) = v.to_str().ok()?.split_once('=')?;
        (k.trim() == name).then(|| rest.split(';').next().unwrap_or("").to_string())
    })
}

/// A Confluence node's answer (`node=<id> session=<s> new=<0|1>`) split up.
struct NodeAnswer {
    node: String,
    session: String,
    new: bool,
}

fn node_answer(body: &str) -> Result<NodeAnswer> {
    let field = |k: &str| {
        body.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
            .with_context(|| format!("no {k} in the node's answer {body:?}"))
    };
    Ok(NodeAnswer {
        node: field("node=")?,
        session: field("session=")?,
        new: field("new=")? == "1",
    })
}

/// Requests in `node`'s access log whose request line is `request` (like
/// `GET /x HTTP/1.1`) and whose status is `status`.
fn logged(node: &ConfluenceNode, request: &str, status: u16) -> usize {
    let needle = format!("\"{request}\" {status} ");
    node.access_log()
        .iter()
        .filter(|l| l.contains(&needle))
        .count()
}

/// Requests `node` saw that were not the relay's health checks.
fn user_requests(node: &ConfluenceNode) -> Vec<String> {
    node.access_log()
        .into_iter()
        .filter(|l| !l.contains("gangway-relay-health"))
        .collect()
}

/// Waits until `node`'s access log has `n` lines for `request` / `status`
/// (nginx writes a line as it finishes a request).
async fn wait_logged(node: &ConfluenceNode, request: &str, status: u16, n: usize) -> Result<()> {
    let what = format!(
        "{n} × {request:?} {status} in {}'s access log",
        node.node_id()
    );
    poll(&what, Duration::from_secs(10), || {
        Ok((logged(node, request, status) >= n).then_some(()))
    })
    .await
}

fn two_node_confluence(nodes: &[ConfluenceNode], extra: &str) -> String {
    http_service(
        "confluence",
        8090,
        &[nodes[0].addr(), nodes[1].addr()],
        &format!("display_name = \"Confluence\"\n{extra}"),
    )
}

/// README: "`[service.health]` active checks"; "keeps a user on their
/// node … while it is healthy"; "answers `503 no healthy backend for
/// Confluence` rather than hanging".
///
/// A node that is up (its pages still answer 200) but whose health path
/// answers 503 is taken out: the user's affinity cookie for it no longer
/// holds and no user request reaches it. With both nodes out the user
/// gets the relay's 503 and its text at once. When the health path
/// answers 200 again the node comes back after `healthy_threshold`
/// checks, and the user lands on their old node and Tomcat session.
#[tokio::test(flavor = "multi_thread")]
async fn health_checks_take_a_503_node_out_and_bring_it_back() -> Result<()> {
    // The health path answers 503 while the file `down` exists.
    let status = r#"
        location = /claims/status {
            if (-f @DIR@/down) {
                return 503 "node=@NODE@ down\n";
            }
            return 200 "node=@NODE@ up\n";
        }"#;
    let nodes = [
        ConfluenceNode::start_with("node1", status)?,
        ConfluenceNode::start_with("node2", status)?,
    ];
    let services = two_node_confluence(
        &nodes,
        r#"affinity_cookie = "GANGWAY_ROUTE"
[service.health]
path = "/claims/status"
interval_secs = 1
timeout_secs = 1
healthy_threshold = 2
unhealthy_threshold = 2"#,
    );
    let mut r = Relayed::start("confluence", &services).await?;
    let http = r.client(Duration::from_secs(10))?;

    // The user's first page: a node and a session there.
    let resp = get(&http, &format!("{}/display/SPACE", r.base), "").await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let route = set_cookie(&resp, ROUTE).context("the relay set no affinity cookie")?;
    let session = set_cookie(&resp, "JSESSIONID").context("the node set no session")?;
    let first = node_answer(&resp.text().await?)?;
    assert!(first.new);
    let home_at = nodes
        .iter()
        .position(|n| n.node_id() == first.node)
        .unwrap();
    let (home, other) = (&nodes[home_at], &nodes[1 - home_at]);
    let cookies = format!("{ROUTE}={route}; JSESSIONID={session}");
    let at_home = node_answer(
        &get(&http, &format!("{}/x", r.base), &cookies)
            .await?
            .text()
            .await?,
    )?;
    assert_eq!(
        (at_home.node.as_str(), at_home.new),
        (home.node_id(), false)
    );

    // Its health path starts answering 503; the node itself stays up.
    std::fs::write(home.dir().join("down"), "")?;
    r.wait_log("backend marked down", home.addr()).await?;
    let direct = get(&http, &format!("http://{}/claims/status", home.addr()), "").await?;
    assert_eq!(direct.status(), StatusCode::SERVICE_UNAVAILABLE);
    let direct = get(&http, &format!("http://{}/page", home.addr()), "").await?;
    assert_eq!(direct.status(), StatusCode::OK, "the node itself is up");
    assert!(
        logged(home, "GET /claims/status HTTP/1.0", 503) >= 2,
        "unhealthy_threshold = 2: {:#?}",
        home.access_log()
    );
    // nginx may write a line just after the answer went out.
    wait_logged(home, "GET /page HTTP/1.1", 200, 1).await?;
    let seen_by_home = user_requests(home).len();

    // The user's cookie for it no longer holds: the other node serves,
    // and the relay names that node in a new affinity cookie.
    for i in 0..5 {
        let resp = get(&http, &format!("{}/moved/{i}", r.base), &cookies).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        let moved_to = set_cookie(&resp, ROUTE).context("no new affinity cookie")?;
        assert_ne!(moved_to, route);
        let a = node_answer(&resp.text().await?)?;
        assert_eq!(
            a.node,
            other.node_id(),
            "request {i} went to the node marked down"
        );
        assert!(
            a.new,
            "the home node's session does not exist on the other node"
        );
    }
    wait_logged(other, "GET /moved/4 HTTP/1.1", 200, 1).await?;
    assert_eq!(
        user_requests(home).len(),
        seen_by_home,
        "a user request reached the node marked down: {:#?}",
        user_requests(home)
    );

    // Both out: the relay's 503 and its reason, at once (the client's
    // deadline is 10 s), and neither node sees the request.
    std::fs::write(other.dir().join("down"), "")?;
    r.wait_log("backend marked down", other.addr()).await?;
    let seen = (user_requests(home).len(), user_requests(other).len());
    let resp = get(&http, &format!("{}/all-down", r.base), &cookies).await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()["x-gangway-error"],
        "no healthy backend for Confluence"
    );
    assert_eq!(
        resp.text().await?,
        "Gangway: no healthy backend for Confluence\n"
    );
    assert_eq!(
        (user_requests(home).len(), user_requests(other).len()),
        seen
    );
    let audit = r.relay.audit();
    assert!(
        audit.iter().any(|e| e["event"] == "http_refused"
            && e["path"] == "/all-down"
            && e["status"] == 503
            && e["reason"] == "no healthy backend for Confluence"),
        "{audit:#?}"
    );

    // The home node's health path recovers: after two good checks it is
    // back, and the user's old cookies land on their old node and session.
    std::fs::remove_file(home.dir().join("down"))?;
    r.wait_log("backend marked up", home.addr()).await?;
    for i in 0..5 {
        let resp = get(&http, &format!("{}/back/{i}", r.base), &cookies).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            set_cookie(&resp, ROUTE),
            None,
            "the cookie held: nothing to set"
        );
        let a = node_answer(&resp.text().await?)?;
        assert_eq!(
            (a.node.as_str(), a.session.as_str(), a.new),
            (home.node_id(), session.as_str(), false)
        );
    }
    wait_logged(home, "GET /back/4 HTTP/1.1", 200, 1).await?;
    Ok(())
}

/// README: `balance = "least_conn"`. While one node is busy with a slow
/// download, every new request goes to the idle node (round robin would
/// send every other one to the busy node); once that download ends, the
/// nodes share new requests again.
#[tokio::test(flavor = "multi_thread")]
async fn least_conn_sends_new_requests_past_a_busy_node() -> Result<()> {
    // 1 MiB at 8 KiB/s: a download that keeps its node busy for minutes.
    let slow = r#"
        location = /claims/slow {
            alias @DIR@/slow.bin;
            default_type application/octet-stream;
            add_header X-Claims-Node @NODE@;
            limit_rate 8k;
        }"#;
    let nodes = [
        ConfluenceNode::start_with("node1", slow)?,
        ConfluenceNode::start_with("node2", slow)?,
    ];
    for n in &nodes {
        std::fs::write(n.dir().join("slow.bin"), vec![b'x'; 1 << 20])?;
    }
    let services = two_node_confluence(&nodes, r#"balance = "least_conn""#);
    let r = Relayed::start("confluence", &services).await?;
    let http = r.client(Duration::from_secs(30))?;

    let download = get(&http, &format!("{}/claims/slow", r.base), "").await?;
    assert_eq!(download.status(), StatusCode::OK);
    let busy_id = download.headers()["x-claims-node"].to_str()?.to_string();
    let busy = nodes.iter().find(|n| n.node_id() == busy_id).unwrap();
    let idle = nodes.iter().find(|n| n.node_id() != busy_id).unwrap();

    for i in 0..6 {
        let body = get(&http, &format!("{}/q/{i}", r.base), "")
            .await?
            .text()
            .await?;
        assert_eq!(
            node_answer(&body)?.node,
            idle.node_id(),
            "request {i} went to the busy node"
        );
        wait_logged(idle, &format!("GET /q/{i} HTTP/1.1"), 200, 1).await?;
    }
    assert!(
        !busy.access_log().iter().any(|l| l.contains("/q/")),
        "{:#?}",
        busy.access_log()
    );

    // The download is abandoned; nginx logs it once the relay has let go
    // of it, and from then on both nodes take new requests.
    drop(download);
    poll(
        "the abandoned download in the busy node's access log",
        Duration::from_secs(15),
        || {
            Ok(busy
                .access_log()
                .iter()
                .any(|l| l.contains("\"GET /claims/slow HTTP/1.1\" 200"))
                .then_some(()))
        },
    )
    .await?;
    let mut served = Vec::new();
    for i in 0..4 {
        let body = get(&http, &format!("{}/after/{i}", r.base), "")
            .await?
            .text()
            .await?;
        served.push(node_answer(&body)?.node);
    }
    let on_busy = served.iter().filter(|n| **n == busy_id).count();
    assert_eq!(on_busy, 2, "idle nodes share the load: {served:?}");
    Ok(())
}

/// README: "retries another node when a connection fails"; proxy.rs:
/// "another node is tried … when sending fails and the request can be
/// replayed".
///
/// node1 reads each request to `/claims/drop` and closes the connection
/// without an answer (nginx's `return 444`). A GET sent there (by the
/// user's affinity cookie) is sent again to node2 and the user gets node2's
/// 200; a POST is not replayed: the user gets 502 with the relay's reason,
/// node1 saw it once and node2 never.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_get_is_retried_on_another_node_and_a_post_is_not() -> Result<()> {
    let nodes = [
        ConfluenceNode::start_with(
            "node1",
            r#"
        location = /claims/drop {
            return 444;
        }"#,
        )?,
        ConfluenceNode::start("node2")?,
    ];
    let (dropper, good) = (&nodes[0], &nodes[1]);
    let services = two_node_confluence(&nodes, r#"affinity_cookie = "GANGWAY_ROUTE""#);
    let r = Relayed::start("confluence", &services).await?;
    let http = r.client(Duration::from_secs(20))?;

    // The affinity cookie naming node1, as the relay gives it.
    let mut to_dropper = None;
    for _ in 0..4 {
        let resp = get(&http, &format!("{}/", r.base), "").await?;
        let route = set_cookie(&resp, ROUTE).context("no affinity cookie")?;
        if node_answer(&resp.text().await?)?.node == "node1" {
            to_dropper = Some(format!("{ROUTE}={route}"));
            break;
        }
    }
    let to_dropper = to_dropper.context("round robin never chose node1")?;

    // GET: sent to node1, which drops it; sent again to node2.
    let resp = get(&http, &format!("{}/claims/drop", r.base), &to_dropper).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let moved = set_cookie(&resp, ROUTE).context("the relay must name the node that answered")?;
    assert_ne!(format!("{ROUTE}={moved}"), to_dropper);
    assert_eq!(node_answer(&resp.text().await?)?.node, "node2");
    wait_logged(dropper, "GET /claims/drop HTTP/1.1", 444, 1).await?;
    wait_logged(good, "GET /claims/drop HTTP/1.1", 200, 1).await?;
    assert_eq!(logged(dropper, "GET /claims/drop HTTP/1.1", 444), 1);
    assert_eq!(logged(good, "GET /claims/drop HTTP/1.1", 200), 1);

    // POST: sent to node1 once, never to node2.
    let resp = http
        .post(format!("{}/claims/drop", r.base))
        .header("cookie", &to_dropper)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("order=42")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let reason = resp.headers()["x-gangway-error"].to_str()?.to_string();
    let body = resp.text().await?;
    let said = format!("Confluence did not answer ({}: ", dropper.addr());
    assert!(reason.starts_with(&said), "{reason:?}");
    assert_eq!(body, format!("Gangway: {reason}\n"));
    wait_logged(dropper, "POST /claims/drop HTTP/1.1", 444, 1).await?;
    assert_eq!(logged(dropper, "POST /claims/drop HTTP/1.1", 444), 1);
    assert!(
        !good.access_log().iter().any(|l| l.contains("\"POST ")),
        "the POST was replayed: {:#?}",
        good.access_log()
    );
    let audit = r.relay.audit();
    let post: Vec<_> = audit
        .iter()
        .filter(|e| e["method"] == "POST" && e["path"] == "/claims/drop")
        .collect();
    assert_eq!(post.len(), 1, "{audit:#?}");
    assert_eq!(post[0]["status"], 502);
    assert_eq!(post[0]["backend"], dropper.addr().to_string());
    Ok(())
}

/// README: "`Location`, `Content-Location` and cookie domains naming a
/// public URL (or the node itself) are rewritten to the developer's local
/// address". URLs of other hosts and relative ones pass unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn content_location_naming_a_public_url_or_the_node_comes_back_local() -> Result<()> {
    let node = ConfluenceNode::start_with(
        "node1",
        r#"
        location = /claims/public {
            add_header Content-Location "https://confluence.example.com/claims/page.en?lang=en";
            return 200 "node=@NODE@ public\n";
        }
        location = /claims/self {
            add_header Content-Location "http://$server_addr:$server_port/claims/page.de";
            return 200 "node=@NODE@ self\n";
        }
        location = /claims/foreign {
            add_header Content-Location "https://elsewhere.example.org/claims/page";
            return 200 "node=@NODE@ foreign\n";
        }
        location = /claims/relative {
            add_header Content-Location "/claims/page.fr";
            return 200 "node=@NODE@ relative\n";
        }
        location = /claims/created {
            add_header Location "http://$server_addr:$server_port/claims/items/7";
            return 201 "node=@NODE@ created\n";
        }"#,
    )?;
    let services = http_service(
        "confluence",
        8090,
        &[node.addr()],
        r#"public_urls = ["https://confluence.example.com"]"#,
    );
    let r = Relayed::start("confluence", &services).await?;
    let http = r.client(Duration::from_secs(10))?;
    let origin = format!("http://{}", node.addr());
    let local = &r.base;

    let cases = [
        (
            "public",
            "content-location",
            "https://confluence.example.com/claims/page.en?lang=en".to_string(),
            format!("{local}/claims/page.en?lang=en"),
        ),
        (
            "self",
            "content-location",
            format!("{origin}/claims/page.de"),
            format!("{local}/claims/page.de"),
        ),
        (
            "foreign",
            "content-location",
            "https://elsewhere.example.org/claims/page".to_string(),
            "https://elsewhere.example.org/claims/page".to_string(),
        ),
        (
            "relative",
            "content-location",
            "/claims/page.fr".to_string(),
            "/claims/page.fr".to_string(),
        ),
        (
            "created",
            "location",
            format!("{origin}/claims/items/7"),
            format!("{local}/claims/items/7"),
        ),
    ];
    for (path, header, sent, seen) in cases {
        // What the node sends …
        let direct = get(&http, &format!("{origin}/claims/{path}"), "").await?;
        assert_eq!(direct.headers()[header], sent.as_str(), "{path}");
        let status = direct.status();
        // … and what the user gets through the relay.
        let resp = get(&http, &format!("{local}/claims/{path}"), "").await?;
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(resp.headers()[header], seen.as_str(), "{path}");
        assert_eq!(resp.text().await?, format!("node=node1 {path}\n"));
    }
    Ok(())
}

/// README: "Upstream requests carry `X-Forwarded-For`, `-Proto`, `-Host`,
/// `-Port`": the node sees the address the developer's browser used (the
/// agent's plain-http local listener), whatever the client claimed.
/// (`X-Forwarded-For`, `-Host` and the identity headers are
/// http_relay.rs's.)
#[tokio::test(flavor = "multi_thread")]
async fn forwarded_proto_and_port_name_the_local_address() -> Result<()> {
    let node = ConfluenceNode::start("node1")?;
    let services = http_service("confluence", 8090, &[node.addr()], "");
    let r = Relayed::start("confluence", &services).await?;
    let http = r.client(Duration::from_secs(10))?;
    let local_port = r.base.rsplit(':').next().unwrap().to_string();
    let body = http
        .get(format!("{}/headers", r.base))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-port", "443")
        .send()
        .await?
        .text()
        .await?;
    let seen: std::collections::BTreeMap<&str, &str> =
        body.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(seen["x-forwarded-proto"], "http", "{body}");
    assert_eq!(seen["x-forwarded-port"], local_port, "{body}");
    assert_eq!(
        seen["x-forwarded-host"],
        &r.base["http://".len()..],
        "{body}"
    );
    Ok(())
}

/// The SHA-256 of `bytes`, by `sha256sum`.
fn sha256(dir: &Path, bytes: &[u8]) -> Result<String> {
    let file = dir.join("payload.bin");
    std::fs::write(&file, bytes)?;
    let out = Command::new("sha256sum")
        .arg(&file)
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success(), "sha256sum failed");
    std::fs::remove_file(&file)?;
    let text = String::from_utf8(out.stdout)?;
    Ok(text.split_whitespace().next().unwrap_or("").to_string())
}

/// 64 MiB that no compression or dedup could shortcut (xorshift).
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The CGI backend's script that reports the body it received.
const SHA256_SCRIPT: &str = r#"sum=$(sha256sum | cut -d' ' -f1)
printf 'Content-Type: text/plain\r\n\r\n'
printf 'method=%s length=%s sha256=%s\n' "$REQUEST_METHOD" "$CONTENT_LENGTH" "$sum""#;

fn cgi_service(cgi: &CgiServer, extra: &str) -> String {
    http_service(
        "bitbucket",
        7990,
        &[cgi.addr()],
        &format!("display_name = \"Bitbucket\"\n{extra}"),
    )
}

/// README: "Bodies stream both ways with no size cap". 64 MiB posted to the
/// agent's listener reach the backend byte for byte: the backend's own
/// SHA-256 of what it read matches the one of what was sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_64_mib_upload_reaches_the_backend_intact() -> Result<()> {
    let cgi = CgiServer::start(&[("sha256", SHA256_SCRIPT)])?;
    let r = Relayed::start("bitbucket", &cgi_service(&cgi, "")).await?;
    let body = payload(64 << 20);
    let want = sha256(r.dir.path(), &body)?;
    let http = r.client(Duration::from_secs(120))?;

    let started = Instant::now();
    let resp = http
        .post(format!("{}/cgi/sha256", r.base))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.text().await?,
        format!("method=POST length={} sha256={want}\n", 64 << 20)
    );
    eprintln!("64 MiB upload took {:?}", started.elapsed());
    let audit = r.relay.audit();
    assert!(
        audit.iter().any(|e| e["event"] == "http_request"
            && e["method"] == "POST"
            && e["path"] == "/cgi/sha256"
            && e["status"] == 200
            && e["backend"] == cgi.addr().to_string()),
        "{audit:#?}"
    );
    Ok(())
}

/// How long the backend stays silent: past every timer found on the way
/// (the relay's 10 s to open a stream, `connect_timeout_secs` and the
/// health check's `timeout_secs`, both set to 1 s here, and the agent's
/// keep-alive ping every 15 s). The relay sets no read or idle timeout on
/// either side of a proxied request (relay/src/http), so minutes take the
/// same path as these 20 s.
const SILENCE: Duration = Duration::from_secs(20);

/// README: "Bodies stream both ways with … no read timeout, so a server
/// may spend minutes packing a large repository". One backend answer
/// stays silent before its headers (a server still working), another
/// between two parts of its body (a pack mid-way); both reach the user
/// whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_response_silent_past_every_timeout_still_arrives() -> Result<()> {
    let s = SILENCE.as_secs();
    let before_headers = format!(
        "sleep {s}\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nprintf 'answered after {s} s\\n'"
    );
    let mid_body = format!(
        "printf 'Content-Type: text/plain\\r\\n\\r\\n'\nprintf 'first part\\n'\nsleep {s}\nprintf 'second part\\n'"
    );
    let cgi = CgiServer::start(&[
        ("ok", "printf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'"),
        ("before-headers", &before_headers),
        ("mid-body", &mid_body),
    ])?;
    let services = cgi_service(
        &cgi,
        r#"connect_timeout_secs = 1
[service.health]
path = "/cgi/ok"
interval_secs = 1
timeout_secs = 1"#,
    );
    let r = Relayed::start("bitbucket", &services).await?;
    // The client waits as long as it takes (within a deadline for a hang).
    let http = r.client(SILENCE * 3)?;

    let quiet_start = async {
        let started = Instant::now();
        let resp = get(&http, &format!("{}/cgi/before-headers", r.base), "").await?;
        let status = resp.status();
        let body = resp.text().await?;
        anyhow::Ok((status, body, started.elapsed()))
    };
    let quiet_middle = async {
        let started = Instant::now();
        let mut resp = get(&http, &format!("{}/cgi/mid-body", r.base), "").await?;
        let status = resp.status();
        let mut body = Vec::new();
        let mut first_part_at = None;
        while let Some(chunk) = resp.chunk().await? {
            body.extend_from_slice(&chunk);
            if first_part_at.is_none() && body.starts_with(b"first part\n") {
                first_part_at = Some(started.elapsed());
            }
        }
        let first = first_part_at.context("the first part never came alone")?;
        anyhow::Ok((status, String::from_utf8(body)?, first, started.elapsed()))
    };
    let (start, middle) = tokio::join!(quiet_start, quiet_middle);

    let (status, body, took) = start?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, format!("answered after {s} s\n"));
    assert!(took >= SILENCE, "{took:?}");

    let (status, body, first, took) = middle?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "first part\nsecond part\n");
    assert!(
        took - first >= SILENCE - Duration::from_secs(1),
        "the body was silent from {first:?} to {took:?}"
    );

    let audit = r.relay.audit();
    for path in ["/cgi/before-headers", "/cgi/mid-body"] {
        assert!(
            audit
                .iter()
                .any(|e| e["event"] == "http_request" && e["path"] == path && e["status"] == 200),
            "{path}: {audit:#?}"
        );
    }
    Ok(())
}

/// README: "ids are derived from the node address, so every relay agrees";
/// "The relay keeps no shared state: run as many as you like behind any L4
/// balancer". Two `gangway-relay` processes with the same services, an
/// agent on each: both give each node the same affinity cookie, and a
/// cookie one relay set keeps the user on that node (and its Tomcat
/// session) through the other, where round robin alone would move them.
#[tokio::test(flavor = "multi_thread")]
async fn two_relays_honour_each_others_affinity_cookie() -> Result<()> {
    let idp = OidcProvider::start(DEFAULT_AUDIENCE, 60)?;
    let cert = TestCert::new()?;
    let nodes = [
        ConfluenceNode::start("node1")?,
        ConfluenceNode::start("node2")?,
    ];
    let services = two_node_confluence(&nodes, r#"affinity_cookie = "GANGWAY_ROUTE""#);
    let mut relays = Vec::new();
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir()?;
        let relay =
            RelayProcess::start(&relay_config_for_idp(dir.path(), &cert, &idp, &services)?)?;
        let agent = AgentProcess::with_client_token(
            &idp,
            &relay,
            &cert,
            CI_DEV,
            dir.path(),
            &["confluence"],
        )
        .await?;
        agents.push(agent);
        relays.push(relay);
        dirs.push(dir);
    }
    let bases: Vec<String> = agents
        .iter()
        .map(|a| format!("http://{}", a.addr("confluence")))
        .collect();
    let https = agents
        .iter()
        .map(|a| client(Duration::from_secs(10), a, "confluence"))
        .collect::<Result<Vec<_>>>()?;

    // Each relay, asked without cookies, names both nodes; the same id
    // for the same node on either relay.
    let mut ids = [
        std::collections::BTreeMap::new(),
        std::collections::BTreeMap::new(),
    ];
    for (relay, base) in bases.iter().enumerate() {
        for _ in 0..4 {
            let resp = get(&https[relay], &format!("{base}/"), "").await?;
            let route = set_cookie(&resp, ROUTE).context("no affinity cookie")?;
            let node = node_answer(&resp.text().await?)?.node;
            let was = ids[relay].insert(node.clone(), route.clone());
            assert!(
                was.is_none() || was == Some(route),
                "relay {relay} changed {node}'s id"
            );
        }
        assert_eq!(
            ids[relay].len(),
            2,
            "relay {relay} used one node: {:?}",
            ids[relay]
        );
    }
    assert_eq!(ids[0], ids[1], "the relays disagree on the nodes' ids");

    // A session made through one relay, used through the other.
    for (from, to) in [(0, 1), (1, 0)] {
        let resp = get(&https[from], &format!("{}/display/SPACE", bases[from]), "").await?;
        let route = set_cookie(&resp, ROUTE).context("no affinity cookie")?;
        let session = set_cookie(&resp, "JSESSIONID").context("no session")?;
        let home = node_answer(&resp.text().await?)?.node;
        let cookies = format!("{ROUTE}={route}; JSESSIONID={session}");
        for i in 0..6 {
            let resp = get(&https[to], &format!("{}/pages/{i}", bases[to]), &cookies).await?;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(
                set_cookie(&resp, ROUTE),
                None,
                "relay {to} did not honour relay {from}'s cookie"
            );
            let a = node_answer(&resp.text().await?)?;
            assert_eq!(
                (a.node.as_str(), a.session.as_str(), a.new),
                (home.as_str(), session.as_str(), false),
                "request {i} through relay {to}"
            );
        }
        let audit = relays[to].audit();
        let home_addr = nodes.iter().find(|n| n.node_id() == home).unwrap().addr();
        let served: Vec<_> = audit
            .iter()
            .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with("/pages/")))
            .filter(|e| e["subject"] == CI_DEV)
            .collect();
        assert_eq!(served.len(), 6, "{audit:#?}");
        assert!(
            served.iter().all(|e| e["backend"] == home_addr.to_string()),
            "{served:#?}"
        );
    }
    drop(agents);
    Ok(())
}
