//! The local door for `http` services (issue 14): only the signed-in
//! developer's own git and browser get through the agent's listener.
//! Real peers: git smart HTTP (lighttpd + git http-backend), nginx
//! Confluence stand-in with a WebSocket echo as Synchrony, headless
//! Chromium, and the real `gangway` / `gangway-relay` binaries.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures::{SinkExt, StreamExt};
use gangway_tests::gangway::{gangway_command, http_service, AgentProcess, RelaySetup};
use gangway_tests::peers::browser::Browser;
use gangway_tests::peers::git::{self, GitHttpServer, RepoFixture};
use gangway_tests::peers::nginx::ConfluenceNode;
use gangway_tests::peers::oidc::CI_DEV;
use gangway_tests::peers::process::{assert_success, poll, Process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` on a new connection to `addr`; the first answer (head and
/// its Content-Length body), or what came until the agent closed.
async fn raw(addr: SocketAddr, raw: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(raw.as_bytes()).await?;
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = header(&text, "content-length").and_then(|l| l.parse::<usize>().ok());
                if len.is_some_and(|l| out.len() >= end + 4 + l) {
                    return Ok(());
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("no whole answer within 10 s")??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Sends `raw`; everything the agent answers until it closes.
async fn raw_until_close(addr: SocketAddr, raw: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(raw.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .context("the agent did not close the connection")??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status_of(resp: &str) -> &str {
    resp.split(' ').nth(1).unwrap_or("")
}

/// The first answer's header `name` (lower case), if any.
fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The one-time URL for `service`, as `gangway open SERVICE --print` gives it.
async fn open_url(agent: &AgentProcess, service: &str) -> Result<String> {
    let mut cmd = gangway_command(&["open", service, "--print"])?;
    cmd.env("GANGWAY_CONTROL_SOCKET", &agent.control_socket);
    let f = Process::spawn_captured("gangway open", cmd)?
        .finish(Duration::from_secs(20))
        .await?;
    assert_success("gangway open --print", &f);
    Ok(f.stdout.trim().to_string())
}

/// The door cookie, through the one-time URL.
async fn door_cookie(agent: &AgentProcess, service: &str) -> Result<String> {
    let url = open_url(agent, service).await?;
    let path = url
        .split_once("127.0.0.1:")
        .and_then(|(_, r)| r.split_once('/'))
        .map(|(_, p)| p)
        .context("url path")?;
    let addr = agent.addr(service);
    let resp = raw(
        addr,
        &format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await?;
    ensure!(status_of(&resp) == "303", "{resp}");
    let set = header(&resp, "set-cookie").context("no Set-Cookie")?;
    ensure!(
        set.ends_with("; HttpOnly; SameSite=Strict; Path=/"),
        "{set}"
    );
    Ok(set.split(';').next().unwrap().to_string())
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

/// Every `/proc/*/cmdline` now, joined.
fn all_cmdlines() -> String {
    let mut out = String::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
                out.push_str(&String::from_utf8_lossy(&b));
                out.push('\n');
            }
        }
    }
    out
}

/// nginx's access log without its start-up identity check.
fn served(node: &ConfluenceNode) -> Vec<String> {
    node.access_log()
        .into_iter()
        .filter(|l| !l.contains("GET /whoami HTTP/1.0"))
        .collect()
}

fn git_in(cwd: &Path, args: &[&str], env: &[(String, String)]) -> Result<String> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    git::git_env(cwd, args, &env)
}

/// The owner's `git clone` and `git push` over HTTP work with nothing but
/// what `gangway git setup` wrote; `~/.gitconfig` holds helper lines and
/// no secret; the secret is in no log and no process's arguments.
#[tokio::test(flavor = "multi_thread")]
async fn git_clone_and_push_need_only_git_setup_and_leave_no_secret() -> Result<()> {
    let s = RelaySetup::new()?;
    let repos = RepoFixture::create("demo")?;
    let node = GitHttpServer::start(repos.root())?;
    let relay = s.relay(&http_service("bitbucket", 7990, &[node.addr()], ""))?;
    let agent = s.agent(&relay, CI_DEV, &["bitbucket"]).await?;
    let home = tempfile::tempdir()?;
    let gitconfig = home.path().join(".gitconfig");
    let env = vec![
        ("HOME".to_string(), home.path().display().to_string()),
        (
            "GIT_CONFIG_GLOBAL".to_string(),
            gitconfig.display().to_string(),
        ),
        (
            "GANGWAY_CONTROL_SOCKET".to_string(),
            agent.control_socket.display().to_string(),
        ),
    ];

    // Without the setup, git gets the challenge and, with no helper, fails.
    let url = format!("http://{}/scm/demo.git", agent.addr("bitbucket"));
    let work = tempfile::tempdir()?;
    let (w, u, e) = (work.path().to_path_buf(), url.clone(), env.clone());
    let err = tokio::task::spawn_blocking(move || git_in(&w, &["clone", "--quiet", &u, "c0"], &e))
        .await?
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("401")
            || format!("{err:#}").contains("Authentication failed")
            || format!("{err:#}").contains("could not read Username"),
        "{err:#}"
    );

    let mut setup = gangway_command(&["git", "setup"])?;
    setup.envs(env.iter().map(|(k, v)| (k, v)));
    let f = Process::spawn_captured("gangway git setup", setup)?
        .finish(Duration::from_secs(20))
        .await?;
    assert_success("gangway git setup", &f);
    let config = std::fs::read_to_string(&gitconfig)?;
    let port = agent.addr("bitbucket").port();
    assert!(
        config.contains(&format!("[credential \"http://127.0.0.1:{port}\"]")),
        "{config}"
    );
    assert!(
        config.contains(&format!("[credential \"http://localhost:{port}\"]")),
        "{config}"
    );
    let lines: Vec<&str> = config
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        lines.iter().all(|l| l.starts_with("[credential ")
            || *l == "helper ="
            || (l.starts_with("helper = ") && l.ends_with(" git credential"))),
        "only helper lines: {config}"
    );

    // Clone, commit, push, while watching every process's arguments.
    let secret = agent.door_secret("bitbucket")?;
    let done = Arc::new(AtomicBool::new(false));
    let (d, sec) = (done.clone(), secret.clone());
    let watcher = std::thread::spawn(move || {
        let mut seen = false;
        while !d.load(Ordering::SeqCst) {
            seen |= all_cmdlines().contains(&sec);
        }
        seen
    });
    let (w, u, e) = (work.path().to_path_buf(), url.clone(), env.clone());
    let pushed = tokio::task::spawn_blocking(move || -> Result<String> {
        let dest = w.join("c1");
        git_in(&w, &["clone", "--quiet", &u, dest.to_str().unwrap()], &e)?;
        std::fs::write(dest.join("door.txt"), "through the door\n")?;
        git_in(&dest, &["add", "door.txt"], &e)?;
        git_in(&dest, &["commit", "--quiet", "-m", "door"], &e)?;
        git_in(
            &dest,
            &["push", "--quiet", "origin", "HEAD:refs/heads/main"],
            &e,
        )?;
        Ok(git_in(&dest, &["rev-parse", "HEAD"], &e)?
            .trim()
            .to_string())
    })
    .await??;
    done.store(true, Ordering::SeqCst);
    let in_args = watcher.join().expect("watcher");
    assert_eq!(repos.head_commit("demo")?, pushed);
    assert!(!in_args, "the secret showed in a process's arguments");
    assert!(
        !std::fs::read_to_string(&gitconfig)?.contains(&secret),
        "secret in ~/.gitconfig"
    );
    assert!(
        !agent.process.output().contains(&secret),
        "secret in the agent's log"
    );
    // The credential never reached the relay's backend: the relay saw the
    // pushes as the signed-in user, with no Authorization of ours.
    assert!(relay
        .audit()
        .iter()
        .any(|e| e["event"] == "http_request" && e["status"] == 200));

    // The helper answers only for the agent's own listeners.
    for host in ["example.com", "127.0.0.1:1", "rebind.evil.example:7990"] {
        let mut cmd = gangway_command(&["git", "credential", "get"])?;
        cmd.env("GANGWAY_CONTROL_SOCKET", &agent.control_socket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn()?;
        std::io::Write::write_all(
            &mut child.stdin.take().context("stdin")?,
            format!("protocol=http\nhost={host}\n\n").as_bytes(),
        )?;
        let out = child.wait_with_output()?;
        assert!(out.status.success());
        assert!(
            out.stdout.is_empty(),
            "{host}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // `gangway git remove` takes the lines out again.
    let mut remove = gangway_command(&["git", "remove"])?;
    remove.envs(env.iter().map(|(k, v)| (k, v)));
    let f = Process::spawn_captured("gangway git remove", remove)?
        .finish(Duration::from_secs(20))
        .await?;
    assert_success("gangway git remove", &f);
    let config = std::fs::read_to_string(&gitconfig)?;
    assert!(!config.contains("helper"), "{config}");
    Ok(())
}

/// No credential → 401 with a Basic challenge; a rebinding Host → 421; a
/// foreign Origin → 403 (WebSocket upgrade, POST), whatever the
/// credential; an upgrade let in by the cookie without Origin → 403. None
/// of them reaches the relay or the backend; one good request does.
#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_never_reach_the_relay() -> Result<()> {
    let s = RelaySetup::new()?;
    let node = ConfluenceNode::start("node1")?;
    let echo = ws_echo().await?;
    let relay = s.relay(&http_service(
        "confluence",
        8090,
        &[node.addr()],
        &format!("[[service.route]]\nprefix = \"/synchrony\"\nbackends = [\"{echo}\"]"),
    ))?;
    let agent = s.agent(&relay, CI_DEV, &["confluence"]).await?;
    let addr = agent.addr("confluence");
    let auth = agent.door_auth("confluence")?;
    let cookie = door_cookie(&agent, "confluence").await?;

    let r = raw(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await?;
    assert_eq!(status_of(&r), "401", "{r}");
    assert_eq!(
        header(&r, "www-authenticate"),
        Some("Basic realm=\"Gangway\"")
    );
    let r = raw(addr, &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic Z2FuZ3dheTp3cm9uZw==\r\nConnection: close\r\n\r\n")).await?;
    assert_eq!(status_of(&r), "401", "a wrong password: {r}");

    let port = addr.port();
    let r = raw(addr, &format!("GET / HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n")).await?;
    assert_eq!(status_of(&r), "421", "{r}");

    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let r = raw(addr, &format!("GET /synchrony/v1/bayeux HTTP/1.1\r\nHost: {addr}\r\n{ws}Origin: http://evil.example\r\nCookie: {cookie}\r\n\r\n")).await?;
    assert_eq!(status_of(&r), "403", "cross-origin WebSocket: {r}");
    let r = raw(addr, &format!("GET /synchrony/v1/bayeux HTTP/1.1\r\nHost: {addr}\r\n{ws}Origin: http://evil.example\r\nAuthorization: {auth}\r\n\r\n")).await?;
    assert_eq!(
        status_of(&r),
        "403",
        "cross-origin WebSocket with Basic: {r}"
    );
    let r = raw(
        addr,
        &format!(
            "GET /synchrony/v1/bayeux HTTP/1.1\r\nHost: {addr}\r\n{ws}Cookie: {cookie}\r\n\r\n"
        ),
    )
    .await?;
    assert_eq!(status_of(&r), "403", "cookie upgrade without Origin: {r}");
    let r = raw(addr, &format!("POST /upload HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\nCookie: {cookie}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")).await?;
    assert_eq!(status_of(&r), "403", "cross-origin POST: {r}");
    let r = raw(addr, &format!("POST /upload HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")).await?;
    assert_eq!(status_of(&r), "403", "cookie POST without Origin: {r}");

    assert!(
        relay.audit().iter().all(|e| e["event"] != "http_request"),
        "{:?}",
        relay.audit()
    );
    assert!(served(&node).is_empty(), "{:?}", served(&node));

    // The same agent lets the owner through: Basic, then the cookie with
    // a local Origin (and the local WebSocket), each stripped on the way.
    let r = raw(addr, &format!("GET /headers HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n")).await?;
    assert_eq!(status_of(&r), "200", "{r}");
    assert!(r.contains("x-gangway-user="), "{r}");
    let r = raw(addr, &format!("POST /upload HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nCookie: theme=dark; {cookie}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")).await?;
    assert_eq!(status_of(&r), "200", "{r}");
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/synchrony/v1/bayeux"),
    )?;
    req.headers_mut()
        .insert("origin", format!("http://{addr}").parse()?);
    req.headers_mut().insert("cookie", cookie.parse()?);
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "hello".into(),
    ))
    .await?;
    assert_eq!(ws.next().await.context("echo")??.into_text()?, "hello");
    let log = poll(
        "both requests in nginx's log",
        Duration::from_secs(10),
        || {
            let log = node.access_log();
            Ok((log.len() >= 2).then_some(log))
        },
    )
    .await?;
    assert_eq!(served(&node).len(), 2, "{log:?}");
    Ok(())
}

/// A request smuggled behind `Content-Length` + `Transfer-Encoding`, and
/// conflicting lengths, get no second request through.
#[tokio::test(flavor = "multi_thread")]
async fn smuggled_requests_do_not_get_through() -> Result<()> {
    let s = RelaySetup::new()?;
    let node = ConfluenceNode::start("node1")?;
    let relay = s.relay(&http_service("confluence", 8090, &[node.addr()], ""))?;
    let agent = s.agent(&relay, CI_DEV, &["confluence"]).await?;
    let addr = agent.addr("confluence");
    let auth = agent.door_auth("confluence")?;
    let smuggled =
        format!("GET /smuggled HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\r\n");
    let body = format!("0\r\n\r\n{smuggled}");
    let r = raw_until_close(
        addr,
        &format!(
            "POST /upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
            body.len()
        ),
    )
    .await?;
    assert_eq!(status_of(&r), "200", "{r}");
    assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "one answer only: {r}");
    let r = raw_until_close(
        addr,
        &format!("POST /upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello{smuggled}"),
    )
    .await?;
    assert_eq!(status_of(&r), "400", "{r}");
    let r = raw_until_close(
        addr,
        &format!("POST /upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nTransfer-Encoding: gzip\r\n\r\n{smuggled}"),
    )
    .await?;
    assert_eq!(status_of(&r), "400", "{r}");
    // The only request that reached nginx is the first POST.
    poll("the upload in nginx's log", Duration::from_secs(10), || {
        Ok((!served(&node).is_empty()).then_some(()))
    })
    .await?;
    let log = served(&node);
    assert!(log.iter().all(|l| !l.contains("/smuggled")), "{log:?}");
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(relay.audit().iter().all(|e| e["path"] != "/smuggled"));
    Ok(())
}

/// Real headless Chromium: the one-time URL lets the page load and its
/// editor WebSocket echo; the URL works once; without the cookie the page
/// says how to open Confluence.
#[tokio::test(flavor = "multi_thread")]
async fn chromium_opens_confluence_through_the_one_time_url() -> Result<()> {
    let s = RelaySetup::new()?;
    let echo = ws_echo().await?;
    // A page whose script opens the Synchrony WebSocket and shows the echo.
    let node = ConfluenceNode::start_with(
        "node1",
        r#"
        location = /editor {
            default_type text/html;
            return 200 '<!doctype html><html><body><h1 id="title">Engineering space</h1><p id="ws">waiting</p>
<script>
var ws = new WebSocket("ws://" + location.host + "/synchrony/v1/bayeux");
ws.onopen = function () { ws.send("edit from the browser"); };
ws.onmessage = function (e) { document.getElementById("ws").textContent = "echo: " + e.data; };
ws.onerror = function () { document.getElementById("ws").textContent = "error"; };
</script></body></html>';
        }
"#,
    )?;
    let relay = s.relay(&http_service(
        "confluence",
        8090,
        &[node.addr()],
        &format!("[[service.route]]\nprefix = \"/synchrony\"\nbackends = [\"{echo}\"]"),
    ))?;
    let agent = s.agent(&relay, CI_DEV, &["confluence"]).await?;
    let addr = agent.addr("confluence");
    let browser = Browser::start().await?;

    // Without the cookie: the page that says how to get in.
    browser.goto(&format!("http://{addr}/editor")).await?;
    let h1 = browser.text("h1").await?;
    assert!(h1.contains("through Gangway"), "{h1}");
    let p = browser.text("body").await?;
    assert!(p.contains("gangway open confluence"), "{p}");

    let url = format!("{}&next=/editor", open_url(&agent, "confluence").await?);
    browser.goto(&url).await?;
    assert_eq!(browser.url().await?, format!("http://{addr}/editor"));
    assert_eq!(browser.text("#title").await?, "Engineering space");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let t = browser.text("#ws").await?;
        if t != "waiting" {
            break t;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the editor WebSocket never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shown, "echo: edit from the browser");

    // The one-time URL does not work twice (in a fresh browser, without
    // the cookie the first one got).
    let other = Browser::start().await?;
    other.goto(&url).await?;
    let body = other.text("body").await?;
    assert!(body.contains("gangway open confluence"), "{body}");
    assert!(other.find("#title").await?.is_none());
    Ok(())
}

/// The gate keeps the raw path's economy: one local keep-alive connection
/// is one tunnel stream, however many requests it carries.
#[tokio::test(flavor = "multi_thread")]
async fn one_local_connection_is_one_tunnel_stream() -> Result<()> {
    let s = RelaySetup::new()?;
    let node = ConfluenceNode::start("node1")?;
    let relay = s.relay(&http_service("confluence", 8090, &[node.addr()], ""))?;
    let agent = s.agent(&relay, CI_DEV, &["confluence"]).await?;
    let addr = agent.addr("confluence");
    let auth = agent.door_auth("confluence")?;
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    for i in 0..5 {
        tcp.write_all(
            format!("GET /pages/{i} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        // One whole answer (nginx sends a Content-Length) before the next.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await??;
            ensure!(n > 0, "the agent closed the connection after {i} answers");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = header(&text, "content-length").context("length")?.parse()?;
                if got.len() >= end + 4 + len {
                    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                    break;
                }
            }
        }
    }
    let audit = poll(
        "five requests in the audit log",
        Duration::from_secs(10),
        || {
            let audit = relay.audit();
            let served = audit
                .iter()
                .filter(|e| e["event"] == "http_request")
                .count();
            Ok((served >= 5).then_some(audit))
        },
    )
    .await?;
    let opens = audit.iter().filter(|e| e["event"] == "stream_open").count();
    assert_eq!(opens, 1, "{audit:#?}");
    Ok(())
}
