//! The nginx Confluence nodes on their own: Tomcat-style session cookies per
//! node (so lost affinity is visible), the fixed endpoints the relay tests
//! rely on, large bodies, and stop. If these fail, the load-balancing tests
//! cannot pass.
//!
//! reqwest runs without a cookie store: cookies are sent by hand, so each
//! test says exactly which session it presents to which node.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gangway_tests::peers::nginx::{
    ConfluenceNode, LOGIN_SET_COOKIE, REDIRECT_LOCATION, STATUS_BODY,
};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{redirect, Client, Response, StatusCode};

fn client() -> Result<Client> {
    Ok(Client::builder()
        .redirect(redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// GET `path` on `node`, with `Cookie: JSESSIONID=<session>` if given.
async fn get(
    client: &Client,
    node: &ConfluenceNode,
    path: &str,
    session: Option<&str>,
) -> Result<Response> {
    let mut req = client.get(format!("http://{}{path}", node.addr()));
    if let Some(s) = session {
        req = req.header(COOKIE, format!("JSESSIONID={s}"));
    }
    Ok(req.send().await?)
}

fn set_cookies(resp: &Response) -> Vec<String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap_or("<non-ASCII>").to_string())
        .collect()
}

/// Checks the one `Set-Cookie` is a new Tomcat-style session of `node_id`
/// and returns its value.
fn new_session(set_cookies: &[String], node_id: &str) -> Result<String> {
    ensure!(
        set_cookies.len() == 1,
        "want one Set-Cookie, got {set_cookies:?}"
    );
    let value = set_cookies[0]
        .strip_prefix("JSESSIONID=")
        .and_then(|rest| rest.strip_suffix("; Path=/; HttpOnly"))
        .with_context(|| format!("unexpected Set-Cookie {:?}", set_cookies[0]))?;
    let (id, suffix) = value
        .split_once('.')
        .with_context(|| format!("no jvmRoute in {value:?}"))?;
    ensure!(suffix == node_id, "session {value:?} is not of {node_id}");
    ensure!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "session id {id:?} is not a request id"
    );
    Ok(value.to_string())
}

#[tokio::test]
async fn sessions_stick_to_the_node_that_made_them() -> Result<()> {
    let node1 = ConfluenceNode::start("node1")?;
    let node2 = ConfluenceNode::start("node2")?;
    assert_eq!(node1.node_id(), "node1");
    assert_eq!(node2.node_id(), "node2");
    assert_ne!(node1.addr(), node2.addr());
    let client = client()?;

    // No cookie: a new session on node1.
    let resp = get(&client, &node1, "/", None).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain");
    let session = new_session(&set_cookies(&resp), "node1")?;
    assert_eq!(resp.text().await?, "node=node1 session=none new=1\n");

    // The same cookie back to node1, on any path: the same session.
    for path in ["/", "/display/SPACE/Page", "/rest/api/content?limit=1"] {
        let resp = get(&client, &node1, path, Some(&session)).await?;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(set_cookies(&resp), Vec::<String>::new(), "{path}");
        assert_eq!(
            resp.text().await?,
            format!("node=node1 session={session} new=0\n"),
            "{path}"
        );
    }

    // Among other cookies, still recognised.
    let resp = client
        .get(format!("http://{}/", node1.addr()))
        .header(COOKIE, format!("seraph=abc; JSESSIONID={session}; x=1"))
        .send()
        .await?;
    assert_eq!(set_cookies(&resp), Vec::<String>::new());
    assert_eq!(
        resp.text().await?,
        format!("node=node1 session={session} new=0\n")
    );

    // node1's session sent to node2: lost affinity shows as a new session.
    let resp = get(&client, &node2, "/", Some(&session)).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let session2 = new_session(&set_cookies(&resp), "node2")?;
    assert_eq!(
        resp.text().await?,
        format!("node=node2 session={session} new=1\n")
    );
    assert_ne!(session2, session);

    // Every new session gets a fresh id.
    let again = get(&client, &node1, "/", None).await?;
    assert_ne!(new_session(&set_cookies(&again), "node1")?, session);
    Ok(())
}

#[tokio::test]
async fn fixed_endpoints() -> Result<()> {
    let node = ConfluenceNode::start("node7")?;
    let client = client()?;

    let resp = client
        .get(format!("http://{}/headers", node.addr()))
        .header("X-Gangway-User", "x")
        .header("X-Gangway-Groups", "confluence-users,devs")
        .header("X-Forwarded-Proto", "https")
        .header("Host", "confluence.example.com")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.text().await?,
        "x-gangway-user=x\n\
         x-gangway-groups=confluence-users,devs\n\
         x-gangway-assertion=\n\
         x-forwarded-for=\n\
         x-forwarded-proto=https\n\
         x-forwarded-host=\n\
         x-forwarded-port=\n\
         host=confluence.example.com\n\
         node=node7\n"
    );

    let resp = get(&client, &node, "/redirect", None).await?;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()[LOCATION], REDIRECT_LOCATION);
    assert_eq!(
        REDIRECT_LOCATION,
        "https://confluence.example.com/display/SPACE/Page?x=1"
    );
    assert_eq!(set_cookies(&resp), Vec::<String>::new());

    let resp = get(&client, &node, "/login", None).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(set_cookies(&resp), vec![LOGIN_SET_COOKIE.to_string()]);
    assert!(LOGIN_SET_COOKIE.contains("; Domain=confluence.example.com;"));
    assert_eq!(resp.text().await?, "node=node7 login\n");

    let resp = get(&client, &node, "/status", None).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
    assert_eq!(resp.text().await?, STATUS_BODY);
    let status: serde_json::Value = serde_json::from_str(STATUS_BODY)?;
    assert_eq!(status, serde_json::json!({"state": "RUNNING"}));
    Ok(())
}

#[tokio::test]
async fn uploads_of_any_size_are_accepted() -> Result<()> {
    let node = ConfluenceNode::start("node1")?;
    let client = client()?;

    // Above nginx's default 1 MB limit; twice on one connection, so the
    // body was really consumed.
    let body = vec![0x5a_u8; 8 * 1024 * 1024 + 17];
    for _ in 0..2 {
        let resp = client
            .post(format!("http://{}/upload", node.addr()))
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.text().await?, "node=node1 ok\n");
    }

    // Chunked, by hand (no streaming body in this reqwest build), followed by
    // a second request on the same connection.
    let addr = node.addr();
    let answers = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: confluence.example.com\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )?;
        let chunk = vec![b'c'; 64 * 1024];
        for _ in 0..64 {
            s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
            s.write_all(&chunk)?;
            s.write_all(b"\r\n")?;
        }
        s.write_all(b"0\r\n\r\n")?;
        s.write_all(
            b"GET /status HTTP/1.1\r\nHost: confluence.example.com\r\nConnection: close\r\n\r\n",
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .await??;
    assert!(
        answers.starts_with("HTTP/1.1 200 OK\r\n"),
        "chunked upload: {answers}"
    );
    assert!(answers.contains("\r\n\r\nnode=node1 ok\nHTTP/1.1 200 OK\r\n"));
    assert!(answers.ends_with(&format!("\r\n\r\n{STATUS_BODY}")));
    Ok(())
}

#[tokio::test]
async fn stop_refuses_connections() -> Result<()> {
    let mut node1 = ConfluenceNode::start("node1")?;
    let node2 = ConfluenceNode::start("node2")?;
    let client = client()?;
    let addr = node1.addr();

    // A kept-alive connection open while the node goes away.
    assert_eq!(
        get(&client, &node1, "/status", None).await?.status(),
        StatusCode::OK
    );

    node1.stop();
    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .expect_err("node1 still accepts after stop()");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(get(&client, &node1, "/status", None).await.is_err());

    // The other node is untouched; stop() twice (and drop after) is fine.
    let resp = get(&client, &node2, "/", None).await?;
    assert_eq!(resp.text().await?, "node=node2 session=none new=1\n");
    node1.stop();
    Ok(())
}
