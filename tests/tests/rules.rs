//! Access rules that can't be dodged: the relay judges (and forwards) one
//! canonical request target, evaluates every rule with deny winning, names
//! git services itself, drops spoofable headers in every spelling, and
//! keeps each route's node affinity apart.
//!
//! What reached a backend is read from a [`Tap`]: a TCP pass-through in
//! front of the real backend (lighttpd + git http-backend, nginx) that keeps
//! every byte the relay sent it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use gangway_tests::gangway::{http_service, RelayProcess, RelaySetup};
use gangway_tests::peers::git::{self, GitHttpServer, RepoFixture};
use gangway_tests::peers::nginx::ConfluenceNode;
use gangway_tests::peers::oidc::{CI_DEV, CI_READONLY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A TCP pass-through to `upstream` that keeps every byte sent upstream.
/// Stops (with every connection) on drop.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    async fn start(upstream: SocketAddr) -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection ends with the tap.
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = l.accept().await {
                let s = s.clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            s.lock().unwrap().extend_from_slice(&buf[..n]);
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                        let _ = cw.shutdown().await;
                    };
                    tokio::join!(up, down);
                });
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// Everything sent upstream so far, lower-cased (header names are
    /// case-insensitive; pack data shows up as noise).
    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).to_ascii_lowercase()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `head` (request line and headers, without the blank line) as it
/// is, byte for byte, with `Connection: close`; returns the status and the
/// whole answer. No URL library in between to tidy the target.
async fn raw(addr: SocketAddr, auth: &str, head: &str) -> Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let req = format!("{head}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut out))
        .await
        .context("answer timed out")??;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {text:?}"))?;
    Ok((status, text))
}

/// Audit lines refused with `status` whose path is `path`.
fn refused(relay: &RelayProcess, status: u16, path: &str) -> usize {
    relay
        .audit()
        .iter()
        .filter(|e| e["event"] == "http_refused" && e["status"] == status && e["path"] == path)
        .count()
}

/// A relay setup, and the `demo` repository served over smart HTTP.
fn git_setup() -> Result<(RelaySetup, RepoFixture, GitHttpServer)> {
    let s = RelaySetup::new()?;
    let repos = RepoFixture::create("demo")?;
    let git_server = GitHttpServer::start(repos.root())?;
    Ok((s, repos, git_server))
}

/// A `[[service.rule]]`: what `matcher` (one TOML line) matches is for
/// developers only, refused to others with `reason`.
fn developers_only(matcher: &str, reason: &str) -> String {
    format!(
        r#"
[[service.rule]]
{matcher}
allow_groups = ["developers"]
reason = "{reason}"
"#
    )
}

fn bitbucket(backend: SocketAddr, rule: &str) -> String {
    http_service(
        "bitbucket",
        7990,
        &[backend],
        &format!("allow_groups = [\"developers\", \"readers\"]\n{rule}"),
    )
}

/// Finding: with `path_contains = "git-receive-pack"`, a reader's
/// `git-receive-p%61ck` passed the rule and lighttpd decoded it into a
/// push. Now both spellings (and others) are refused with 403 and an
/// audit line, and nothing of them reaches git http-backend.
#[tokio::test(flavor = "multi_thread")]
async fn encoded_push_by_a_reader_is_refused_before_the_backend() -> Result<()> {
    let (s, _repos, git_server) = git_setup()?;
    let tap = Tap::start(git_server.addr()).await?;
    let rule = developers_only(
        r#"path_contains = "git-receive-pack""#,
        "pushing needs the developers group",
    );
    let relay = s.relay(&bitbucket(tap.addr, &rule))?;
    let reader = s.agent(&relay, CI_READONLY, &["bitbucket"]).await?;
    let local = reader.addr("bitbucket");
    let auth = reader.door_auth("bitbucket")?;
    let host = format!("Host: {local}\r\nAuthorization: {auth}");

    // The tap sees what a reader may do: a fetch's ref advertisement.
    let (status, _) = raw(
        local,
        &auth,
        &format!("GET /scm/demo.git/info/refs?service=git-upload-pack HTTP/1.1\r\n{host}"),
    )
    .await?;
    assert_eq!(status, 200);
    assert!(tap.seen().contains("git-upload-pack"), "{}", tap.seen());

    let pushes = [
        "POST /scm/demo.git/git-receive-p%61ck",
        "GET /scm/demo.git/info/refs?service=git-receive-p%61ck",
        "POST /scm/demo.git/git%2Dreceive%2Dpack",
        "GET /scm/demo.git/info/refs?s%65rvice=git-receive-pack",
    ];
    for line in pushes {
        let body = if line.starts_with("POST") {
            "\r\nContent-Type: application/x-git-receive-pack-request\r\nContent-Length: 4"
        } else {
            ""
        };
        let mut tcp = TcpStream::connect(local).await?;
        let req = format!("{line} HTTP/1.1\r\n{host}{body}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await?;
        if line.starts_with("POST") {
            tcp.write_all(b"0000").await?;
        }
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut out)).await??;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 403"), "{line}: {out}");
        assert!(out.contains("pushing needs the developers group"), "{out}");
    }
    let seen = tap.seen();
    assert!(
        !seen.contains("receive"),
        "a refused push reached git http-backend:\n{seen}"
    );
    let audit = relay.audit();
    let lines: Vec<_> = audit
        .iter()
        .filter(|e| {
            e["event"] == "http_refused" && e["subject"] == CI_READONLY && e["status"] == 403
        })
        .collect();
    assert_eq!(lines.len(), pushes.len(), "{audit:?}");
    // The audit line names the canonical target, as the rule saw it.
    assert!(lines
        .iter()
        .any(|e| e["path"] == "/scm/demo.git/git-receive-pack"));
    Ok(())
}

/// Targets whose meaning depends on who decodes them (dot segments,
/// repeated slashes, an encoded `/` or `\`, NUL, bad escapes, `;`
/// parameters) are refused with 400 and an audit line; none reaches the
/// backend.
#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_targets_are_refused_with_400() -> Result<()> {
    let (s, _repos, git_server) = git_setup()?;
    let tap = Tap::start(git_server.addr()).await?;
    let relay = s.relay(&bitbucket(tap.addr, ""))?;
    let dev = s.agent(&relay, CI_DEV, &["bitbucket"]).await?;
    let local = dev.addr("bitbucket");
    let auth = dev.door_auth("bitbucket")?;
    let targets = [
        "/scm/other.git/../demo.git/info/refs",
        "/scm/demo.git/%2e%2e/demo.git/info/refs",
        "/scm/demo.git/./info/refs",
        "/scm//demo.git/info/refs",
        "/scm/demo.git%2Finfo%2frefs",
        "/scm/demo.git%5Cinfo/refs",
        "/scm/demo.git/info/refs%00",
        "/scm/demo.git/info/refs%zz",
        "/scm/demo.git;v=1/info/refs",
        "/scm/demo.git/info/refs%252e",
        "/scm/demo.git/info/refs?service=git-upload-pack%00",
        "*",
    ];
    for t in targets {
        let (status, answer) =
            raw(local, &auth, &format!("GET {t} HTTP/1.1\r\nHost: {local}")).await?;
        assert_eq!(status, 400, "{t}: {answer}");
        assert_eq!(refused(&relay, 400, t), 1, "{t}: {:?}", relay.audit());
    }
    let seen = tap.seen();
    assert!(
        !seen.contains("info/refs"),
        "an ambiguous target reached the backend:\n{seen}"
    );
    // A canonical target still works, and goes upstream as it came.
    let (status, _) = raw(
        local,
        &auth,
        &format!("GET /scm/demo.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: {local}"),
    )
    .await?;
    assert_eq!(status, 200);
    assert!(tap
        .seen()
        .contains("get /scm/demo.git/info/refs?service=git-upload-pack http/1.1"));
    // Unreserved characters are decoded: the backend gets the canonical
    // target, the one the rules saw.
    let (status, _) = raw(
        local,
        &auth,
        &format!(
            "GET /scm/d%65mo.git/info/r%65fs?service=git-upload-p%61ck HTTP/1.1\r\nHost: {local}"
        ),
    )
    .await?;
    assert_eq!(status, 200);
    assert!(!tap.seen().contains("%65"), "{}", tap.seen());
    Ok(())
}

/// `git = "receive-pack"` blocks a real `git push` by a reader, with the
/// relay's reason shown by git; the reader's clone works, and a developer
/// still pushes.
#[tokio::test(flavor = "multi_thread")]
async fn git_rule_blocks_a_real_push_and_lets_clone_through() -> Result<()> {
    let (s, repos, git_server) = git_setup()?;
    let rule = developers_only(
        r#"git = "receive-pack""#,
        "readers may not push; ask in #scm-access",
    );
    let relay = s.relay(&bitbucket(git_server.addr(), &rule))?;
    let before = repos.head_commit("demo")?;
    let reader = s.agent(&relay, CI_READONLY, &["bitbucket"]).await?;
    let url = git::http_repo_url(reader.addr("bitbucket"), "demo");
    let work = tempfile::tempdir()?;
    let w = work.path().to_path_buf();
    let env = reader.git_env()?;
    let err = tokio::task::spawn_blocking(move || {
        git::clone_commit_push_with(&url, &w.join("reader"), "nope.txt", &env)
    })
    .await?
    .expect_err("a reader's push must fail");
    let err = format!("{err:#}");
    assert!(err.contains("pushing to"), "the clone should work: {err}");
    assert!(
        err.contains("readers may not push; ask in #scm-access"),
        "git should show the relay's reason: {err}"
    );
    assert_eq!(repos.head_commit("demo")?, before, "nothing was pushed");
    assert!(relay.audit().iter().any(|e| e["event"] == "http_refused"
        && e["subject"] == CI_READONLY
        && e["status"] == 403
        && e["path"] == "/scm/demo.git/info/refs"));

    let dev = s.agent(&relay, CI_DEV, &["bitbucket"]).await?;
    let url = git::http_repo_url(dev.addr("bitbucket"), "demo");
    let w = work.path().to_path_buf();
    let env = dev.git_env()?;
    let pushed = tokio::task::spawn_blocking(move || {
        git::clone_commit_push_with(&url, &w.join("dev"), "ok.txt", &env)
    })
    .await??;
    assert_eq!(repos.head_commit("demo")?, pushed);
    Ok(())
}

/// Identity and forwarding headers are dropped in every spelling a CGI
/// server would map to the same variable (`X_Gangway_User` is
/// `HTTP_X_GANGWAY_USER` too), and only `Upgrade: websocket` goes upstream.
#[tokio::test(flavor = "multi_thread")]
async fn underscore_identity_headers_never_reach_the_backend() -> Result<()> {
    let s = RelaySetup::new()?;
    let node = ConfluenceNode::start("node1")?;
    let tap = Tap::start(node.addr()).await?;
    let svc = http_service("confluence", 8090, &[tap.addr], "");
    let relay = s.relay(&svc)?;
    let dev = s.agent(&relay, CI_DEV, &["confluence"]).await?;
    let local = dev.addr("confluence");
    let auth = dev.door_auth("confluence")?;
    let (status, answer) = raw(
        local,
        &auth,
        &format!(
            "GET /headers HTTP/1.1\r\nHost: {local}\r\nX_Gangway_User: admin\r\n\
             X_GANGWAY_GROUPS: admins\r\nx-gangway_assertion: forged\r\n\
             X_Forwarded_For: 6.6.6.6\r\nX-Forwarded_Host: evil.example"
        ),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = raw(
        local,
        &auth,
        &format!(
            "GET /upgrade HTTP/1.1\r\nHost: {local}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__"
        ),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    let seen = tap.seen();
    for gone in [
        "x_gangway",
        "gangway_",
        "x_forwarded",
        "forwarded_",
        "admin",
        "6.6.6.6",
        "evil.example",
        "h2c",
        "http2-settings",
    ] {
        assert!(
            !seen.contains(gone),
            "{gone:?} reached the backend:\n{seen}"
        );
    }
    assert!(
        seen.contains(&format!("x-gangway-user: {CI_DEV}")),
        "{seen}"
    );
    Ok(())
}

/// Cookies a response set, by name.
fn set_cookies(headers: &reqwest::header::HeaderMap) -> BTreeMap<String, String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next()?.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

fn cookie_header(jar: &BTreeMap<String, String>) -> String {
    jar.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// WebSocket echo server (the Synchrony stand-in).
async fn ws_echo() -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = l.accept().await {
            conns.spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close()
                        || ((msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err())
                    {
                        break;
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

/// The Confluence node a page lands on survives the editor: a `/synchrony`
/// WebSocket answers with its own affinity cookie, never the page's, so
/// the next page stays on its node and session. Two services with the same
/// `affinity_cookie` (on 127.0.0.1 browsers share cookies across ports)
/// get cookies of different names.
#[tokio::test(flavor = "multi_thread")]
async fn synchrony_keeps_the_page_node() -> Result<()> {
    let s = RelaySetup::new()?;
    let nodes = [
        ConfluenceNode::start("node1")?,
        ConfluenceNode::start("node2")?,
    ];
    let other = ConfluenceNode::start("bb1")?;
    let (echo, _echo_task) = ws_echo().await?;
    let affinity = r#"affinity_cookie = "GANGWAY_ROUTE""#;
    let svc = http_service(
        "confluence",
        8090,
        &[nodes[0].addr(), nodes[1].addr()],
        &format!(
            r#"{affinity}
[[service.route]]
prefix = "/synchrony"
backends = ["{echo}"]"#
        ),
    ) + &http_service("bitbucket", 7990, &[other.addr()], affinity);
    let relay = s.relay(&svc)?;
    let agent = s
        .agent(&relay, CI_DEV, &["confluence", "bitbucket"])
        .await?;
    let local = agent.addr("confluence");
    let auth = agent.door_auth("confluence")?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(agent.door_headers("confluence")?)
        .build()?;

    let first = http
        .get(format!("http://{local}/display/SPACE"))
        .send()
        .await?;
    let mut jar = set_cookies(first.headers());
    let page_cookies: Vec<String> = jar.keys().filter(|k| *k != "JSESSIONID").cloned().collect();
    assert_eq!(page_cookies.len(), 1, "one affinity cookie: {jar:?}");
    let home = first.text().await?;
    let home = home.split_whitespace().next().unwrap().to_string();

    for i in 0..8 {
        let mut req = format!("ws://{local}/synchrony/v1/bayeux").into_client_request()?;
        req.headers_mut()
            .insert("cookie", cookie_header(&jar).parse()?);
        req.headers_mut().insert("authorization", auth.parse()?);
        let tcp = TcpStream::connect(local).await?;
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
        assert_eq!(resp.status(), 101);
        let set: BTreeMap<String, String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next()?.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.to_string()))
            .collect();
        for name in &page_cookies {
            assert!(
                !set.contains_key(name),
                "the Synchrony answer overwrote the page's affinity cookie {name}: {set:?}"
            );
        }
        jar.extend(set);
        ws.close(None).await?;
        let page = http
            .get(format!("http://{local}/pages/{i}"))
            .header("cookie", cookie_header(&jar))
            .send()
            .await?;
        jar.extend(set_cookies(page.headers()));
        let body = page.text().await?;
        assert!(
            body.starts_with(&home) && body.contains("new=0"),
            "page {i} after the editor left its node {home}: {body}"
        );
    }

    let bb = http
        .get(format!("http://{}/", agent.addr("bitbucket")))
        .send()
        .await?;
    let bb_cookies: Vec<String> = set_cookies(bb.headers())
        .into_keys()
        .filter(|k| k != "JSESSIONID")
        .collect();
    assert_eq!(bb_cookies.len(), 1, "{bb_cookies:?}");
    assert!(
        !page_cookies.contains(&bb_cookies[0]),
        "two services share the affinity cookie {bb_cookies:?}"
    );
    Ok(())
}
