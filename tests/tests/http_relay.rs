//! The relay in front of Bitbucket and Confluence Data Center stand-ins:
//! two real git smart-HTTP nodes, two nginx "Confluence nodes" that set
//! Tomcat-style `JSESSIONID=<id>.nodeN` cookies, and a WebSocket echo
//! server behind `/synchrony` — all reached through the agent's local port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use gangway_tests::gangway::{http_service, RelaySetup};
use gangway_tests::peers::git::{self, GitHttpServer, RepoFixture};
use gangway_tests::peers::nginx::ConfluenceNode;
use gangway_tests::peers::oidc::{CI_DEV, CI_READONLY};
use tokio_tungstenite::tungstenite::Message;

/// Clone and push through a two-node Bitbucket stand-in; one node stops
/// mid-way and new requests go to the other. A read-only group can clone
/// but its push is refused with 403 and a reason.
#[tokio::test(flavor = "multi_thread")]
async fn two_git_nodes_failover_and_read_only_push_refused() -> Result<()> {
    let s = RelaySetup::new()?;
    let repos = RepoFixture::create("demo")?;
    let mut node1 = GitHttpServer::start(repos.root())?;
    let node2 = GitHttpServer::start(repos.root())?;
    let relay = s.relay(&http_service(
        "bitbucket",
        7990,
        &[node1.addr(), node2.addr()],
        r#"allow_groups = ["developers", "readers"]
[service.health]
path = "/scm/demo.git/info/refs"
interval_secs = 1
[[service.rule]]
path_contains = "git-receive-pack"
allow_groups = ["developers"]
reason = "pushing needs the developers group""#,
    ))?;
    let dev = s.agent(&relay, CI_DEV, &["bitbucket"]).await?;
    let url = format!("http://{}/scm/demo.git", dev.addr("bitbucket"));
    let work = tempfile::tempdir()?;
    let w = work.path().to_path_buf();
    let u = url.clone();
    let env = dev.git_env()?;
    let e = env.clone();
    tokio::task::spawn_blocking(move || git::git_with(&w, &["clone", "--quiet", &u, "c1"], &e))
        .await??;
    let both: std::collections::HashSet<_> = relay
        .audit()
        .iter()
        .filter(|e| e["event"] == "http_request")
        .filter_map(|e| e["backend"].as_str().map(str::to_string))
        .collect();
    assert_eq!(both.len(), 2, "round robin should use both nodes: {both:?}");

    // Node 1 goes away mid-way: the next clone and a push still work.
    node1.stop();
    let (w, u) = (work.path().to_path_buf(), url.clone());
    let pushed = tokio::task::spawn_blocking(move || {
        git::clone_commit_push_with(&u, &w.join("c2"), "after-failover.txt", &env)
    })
    .await??;
    assert_eq!(repos.head_commit("demo")?, pushed);
    let audit = relay.audit();
    let after: Vec<_> = audit
        .iter()
        .filter(|e| {
            e["event"] == "http_request"
                && e["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("receive-pack"))
        })
        .collect();
    assert!(!after.is_empty());
    assert!(
        after
            .iter()
            .all(|e| e["backend"] == node2.addr().to_string() && e["status"] == 200),
        "{after:?}"
    );

    // A reader clones, but may not push.
    let reader = s.agent(&relay, CI_READONLY, &["bitbucket"]).await?;
    let rurl = format!("http://{}/scm/demo.git", reader.addr("bitbucket"));
    let w = work.path().to_path_buf();
    let renv = reader.git_env()?;
    let err = tokio::task::spawn_blocking(move || {
        git::clone_commit_push_with(&rurl, &w.join("r1"), "nope.txt", &renv)
    })
    .await?
    .unwrap_err();
    let err = format!("{err:#}");
    // The helper names the step that failed ("pushing to …" only once the
    // clone worked); the relay's own reason must reach the user through git.
    assert!(
        err.contains("pushing to"),
        "the clone should work and the push fail: {err}"
    );
    assert!(
        err.contains("pushing needs the developers group"),
        "git should show the relay's reason: {err}"
    );
    assert!(err.contains("403"), "{err}");
    assert_eq!(
        repos.head_commit("demo")?,
        pushed,
        "the refused push changed nothing"
    );
    assert!(relay.audit().iter().any(|e| e["event"] == "http_refused"
        && e["subject"] == CI_READONLY
        && e["status"] == 403));
    Ok(())
}

/// A minimal cookie jar: name → value, from Set-Cookie headers.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (k, rest) = v.split_once('=').unwrap();
            let val = rest.split(';').next().unwrap();
            self.0.insert(k.trim().to_string(), val.to_string());
        }
    }
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

async fn get(http: &reqwest::Client, jar: &mut Jar, url: &str) -> Result<String> {
    let resp = http.get(url).header("cookie", jar.header()).send().await?;
    jar.take(&resp);
    Ok(resp.text().await?)
}

fn node_of(body: &str) -> &str {
    body.split_whitespace().next().unwrap_or("")
}

/// A browser-like client keeps its Confluence node across 100 requests;
/// when that node stops it moves once, then sticks again. Identity
/// headers can't be spoofed; redirects and cookies come back local.
#[tokio::test(flavor = "multi_thread")]
async fn confluence_affinity_identity_headers_and_rewriting() -> Result<()> {
    let s = RelaySetup::new()?;
    let mut nodes = [
        ConfluenceNode::start("node1")?,
        ConfluenceNode::start("node2")?,
    ];
    let relay = s.relay(&format!(
        r#"
[[service]]
name = "confluence"
display_name = "Confluence"
kind = "http"
local_port = 8090
backends = ["{}", "{}"]
affinity_cookie = "GANGWAY_ROUTE"
public_urls = ["https://confluence.example.com"]
[service.health]
path = "/status"
interval_secs = 1
"#,
        nodes[0].addr(),
        nodes[1].addr()
    ))?;
    let agent = s.agent(&relay, CI_DEV, &["confluence"]).await?;
    let base = format!("http://{}", agent.addr("confluence"));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(agent.door_headers("confluence")?)
        .build()?;

    let mut jar = Jar::default();
    let first = get(&http, &mut jar, &format!("{base}/display/SPACE")).await?;
    let home = node_of(&first).to_string();
    assert!(first.contains("new=1"), "{first}");
    assert!(jar.0.contains_key("GANGWAY_ROUTE_confluence") && jar.0.contains_key("JSESSIONID"));
    let session = jar.0["JSESSIONID"].clone();
    for i in 0..100 {
        let body = get(&http, &mut jar, &format!("{base}/pages/{i}")).await?;
        assert_eq!(node_of(&body), home, "request {i} left its node: {body}");
        assert!(
            body.contains("new=0"),
            "request {i} lost its session: {body}"
        );
    }
    assert_eq!(jar.0["JSESSIONID"], session);

    // The node goes down: the user moves once, then sticks to the new node.
    let idx = nodes
        .iter()
        .position(|n| format!("node={}", n.node_id()) == home)
        .unwrap();
    nodes[idx].stop();
    let moved = get(&http, &mut jar, &format!("{base}/after")).await?;
    let new_home = node_of(&moved).to_string();
    assert_ne!(new_home, home);
    assert!(moved.contains("new=1"));
    for i in 0..20 {
        let body = get(&http, &mut jar, &format!("{base}/again/{i}")).await?;
        assert_eq!(node_of(&body), new_home, "{body}");
        assert!(body.contains("new=0"), "{body}");
    }

    // Spoofed identity headers never reach the upstream; ours do, with an
    // assertion that verifies against the relay's published keys.
    let headers = http
        .get(format!("{base}/headers"))
        .header("x-gangway-user", "admin")
        .header("x-gangway-groups", "admins")
        .header("x-forwarded-for", "6.6.6.6")
        .send()
        .await?
        .text()
        .await?;
    let h: BTreeMap<&str, &str> = headers.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(h["x-gangway-user"], CI_DEV, "{headers}");
    assert_eq!(h["x-gangway-groups"], "developers");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], agent.addr("confluence").to_string());
    assert_eq!(h["host"], "confluence.example.com");
    let pem = std::fs::read(&s.cert.cert)?;
    let relay_http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?;
    let jwks: jsonwebtoken::jwk::JwkSet = relay_http
        .get(format!("{}/.well-known/jwks.json", relay.url()))
        .send()
        .await?
        .json()
        .await?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0])?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&["confluence"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(h["x-gangway-assertion"], &key, &v)
        .context("assertion must verify against the relay's JWKS")?
        .claims;
    assert_eq!(claims["sub"], CI_DEV);
    // A tampered assertion does not.
    let forged = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = h["x-gangway-assertion"].split('.').collect();
        let mut payload: serde_json::Value = serde_json::from_slice(&b64.decode(parts[1])?)?;
        payload["sub"] = "admin".into();
        format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(payload.to_string()),
            parts[2]
        )
    };
    assert!(jsonwebtoken::decode::<serde_json::Value>(&forged, &key, &v).is_err());

    // Redirects to the public name land back on the local address.
    let r = http.get(format!("{base}/redirect")).send().await?;
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        format!("{base}/display/SPACE/Page?x=1")
    );
    let r = http.get(format!("{base}/login")).send().await?;
    let login_cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("seraph="))
        .unwrap();
    assert_eq!(login_cookie, "seraph=abc; Path=/; HttpOnly");
    Ok(())
}

/// WebSocket echo server (the Synchrony stand-in): echoes every message.
async fn ws_echo() -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Synchrony's WebSocket behind `/synchrony`, through the agent: text,
/// binary, a 1 MB message, ping/pong and close.
#[tokio::test(flavor = "multi_thread")]
async fn synchrony_websocket_passes_through() -> Result<()> {
    let s = RelaySetup::new()?;
    let node = ConfluenceNode::start("node1")?;
    let echo = ws_echo().await?;
    let relay = s.relay(&http_service(
        "confluence",
        8090,
        &[node.addr()],
        &format!(
            r#"affinity_cookie = "GANGWAY_ROUTE"
[[service.route]]
prefix = "/synchrony"
backends = ["{echo}"]"#
        ),
    ))?;
    let agent = s.agent(&relay, CI_DEV, &["confluence"]).await?;
    let tcp = tokio::net::TcpStream::connect(agent.addr("confluence")).await?;
    let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    cfg.max_message_size = Some(8 << 20);
    cfg.max_frame_size = Some(8 << 20);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/synchrony/v1/bayeux", agent.addr("confluence")),
    )?;
    req.headers_mut()
        .insert("authorization", agent.door_auth("confluence")?.parse()?);
    let (mut ws, resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg)).await?;
    assert_eq!(resp.status(), 101);
    // Affinity holds for upgrades too: the relay names the node, in the
    // route's own cookie.
    assert!(resp.headers().get_all("set-cookie").iter().any(|c| c
        .to_str()
        .unwrap()
        .starts_with("GANGWAY_ROUTE_confluence_synchrony=")));

    ws.send(Message::Text("hello synchrony".into())).await?;
    assert_eq!(
        ws.next().await.unwrap()?,
        Message::Text("hello synchrony".into())
    );
    let bin: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::Binary(bin.clone().into())).await?;
    assert_eq!(ws.next().await.unwrap()?, Message::Binary(bin.into()));
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::Binary(big.clone().into())).await?;
    match ws.next().await.unwrap()? {
        Message::Binary(b) => assert!(b[..] == big[..], "1 MB message corrupted"),
        other => panic!("expected binary, got {other:?}"),
    }
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await?
        .unwrap()?
    {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected pong, got {other:?}"),
    }
    ws.close(None).await?;
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{end:?}"
    );
    let audit = relay.audit();
    assert!(audit.iter().any(|e| e["event"] == "http_request"
        && e["path"] == "/synchrony/v1/bayeux"
        && e["status"] == 101
        && e["backend"] == echo.to_string()));
    Ok(())
}
