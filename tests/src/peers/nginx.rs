//! Real nginx playing one Confluence (or Bitbucket) Data Center node, for the
//! relay's load-balancing and cookie-affinity tests.
//!
//! Each [`ConfluenceNode`] is its own nginx process with its own prefix
//! directory, config, pid file and logs in a temporary directory. Everything
//! a node answers comes from the config (`map`, `return`, `add_header`); no
//! scripts or extra modules.
//!
//! nginx cannot bind port 0 and report it, so it starts through
//! [`start_on_free_port`], which retries on another port if the bind loses
//! the race. Once the port accepts, a request checks that the answer really
//! comes from this node (nginx retries a busy port for ~2.5 s before it
//! exits, and meanwhile someone else's server could be answering there).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use super::process::{
    require_program, start_on_free_port, startup_timeout, wait_until_refused, Process,
};

/// The public host name of the stand-in Confluence: used in the absolute
/// redirect of `/redirect` and the `Domain` of the cookie set by `/login`.
pub const PUBLIC_HOST: &str = "confluence.example.com";

/// Where `GET /redirect` sends the client (`302`, absolute URL).
pub const REDIRECT_LOCATION: &str = "https://confluence.example.com/display/SPACE/Page?x=1";

/// The `Set-Cookie` of `GET /login` (a host-wide, `Secure` cookie, like
/// Confluence's `seraph.confluence` remember-me cookie).
pub const LOGIN_SET_COOKIE: &str =
    "seraph=abc; Domain=confluence.example.com; Path=/; Secure; HttpOnly";

/// The body of `GET /status` (Confluence's health endpoint).
pub const STATUS_BODY: &str = r#"{"state":"RUNNING"}"#;

/// How long nginx gets to start listening. nginx itself retries a busy port
/// 5 times, 500 ms apart, before it gives up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One nginx "Confluence node" on 127.0.0.1, stopped on drop.
///
/// nginx runs in the foreground as a single process (`daemon off;`,
/// `master_process off;`), so killing the child kills the whole server and
/// no worker is left holding the port.
///
/// What it answers:
/// - any path: `200 text/plain` `node=<id> session=<JSESSIONID or none>
///   new=<0|1>\n`. Unless the request carries a `JSESSIONID` cookie ending in
///   `.<id>` (Tomcat's jvmRoute style), the response sets
///   `JSESSIONID=<request id>.<id>; Path=/; HttpOnly` and says `new=1`, so a
///   cookie of another node shows up as a new session;
/// - `/headers`: the forwarding headers it received, one `name=value` line
///   each (`x-gangway-user`, `x-gangway-groups`, `x-gangway-assertion`,
///   `x-forwarded-for`, `-proto`, `-host`, `-port`, `host`), then `node=<id>`;
/// - `/redirect`: `302` to [`REDIRECT_LOCATION`];
/// - `/login`: `200` with `Set-Cookie:` [`LOGIN_SET_COOKIE`];
/// - `/status`: `200 application/json` [`STATUS_BODY`];
/// - `/upload`: `200` `node=<id> ok\n` after discarding a request body of
///   any size (Content-Length or chunked).
pub struct ConfluenceNode {
    // Dropped first: the process dies before its directory is removed.
    child: Process,
    addr: SocketAddr,
    node_id: String,
    _dir: TempDir,
}

impl ConfluenceNode {
    /// Starts a node. `node_id` (like `node1`) names it in bodies and in the
    /// `JSESSIONID` suffix; letters, digits, `-` and `_` only.
    pub fn start(node_id: &str) -> Result<Self> {
        Self::start_with(node_id, "")
    }

    /// [`ConfluenceNode::start`] with more of the server block: `extra`
    /// (nginx config, e.g. more `location`s) goes after the fixed
    /// locations, with `@DIR@` replaced by the node's own directory (see
    /// [`ConfluenceNode::dir`]) and `@NODE@` by its id. A location whose
    /// answer depends on a file there (`if (-f @DIR@/down)`) lets a test
    /// change what the node answers while it runs.
    pub fn start_with(node_id: &str, extra: &str) -> Result<Self> {
        ensure!(
            !node_id.is_empty()
                && node_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "node id {node_id:?} must be non-empty [A-Za-z0-9_-]"
        );
        let nginx = require_program("nginx")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("gangway-nginx-{node_id}-"))
            .tempdir()
            .context("creating the nginx directory")?;
        for sub in ["logs", "tmp"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        let conf = dir.path().join("nginx.conf");
        let error_log = dir.path().join("logs/error.log");
        let stderr_log = dir.path().join("logs/stderr.log");
        let dir_text = dir
            .path()
            .to_str()
            .filter(|d| !d.contains(['"', '\\', '\'', ' ', ';', '{', '}', '$']))
            .with_context(|| format!("{} cannot be written in nginx.conf", dir.path().display()))?;
        let extra = extra.replace("@DIR@", dir_text).replace("@NODE@", node_id);

        let started = start_on_free_port(&format!("nginx Confluence node {node_id}"), |addr| {
            std::fs::write(&conf, nginx_conf(node_id, addr.port(), &extra))
                .context("writing nginx.conf")?;
            let stderr = std::fs::File::create(&stderr_log)?;
            let mut cmd = Command::new(&nginx);
            // `-p` makes every relative path in the config (pid, logs, temp
            // dirs) relative to the private directory. `-e` overrides the
            // compiled-in error log, which nginx opens before it reads the
            // config (and which may be /var/log/nginx, not writable).
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&error_log)
                .stdout(Stdio::null())
                .stderr(stderr);
            let mut child = Process::spawn("nginx", &mut cmd)?;
            child
                .blocking_wait_for_port(addr, startup_timeout(START_TIMEOUT))
                .and_then(|()| check_identity(addr, node_id))
                .with_context(|| {
                    format!(
                        "nginx logs:\n{}{}",
                        read_log(&error_log),
                        read_log(&stderr_log)
                    )
                })?;
            Ok((child, addr))
        })?;
        let (child, addr) = started;
        Ok(Self {
            child,
            addr,
            node_id: node_id.to_string(),
            _dir: dir,
        })
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's private directory (config, `logs/`, and files a test
    /// puts there for its `extra` locations).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The access log so far, one request a line, in nginx's `combined`
    /// format (`… "GET /path HTTP/1.1" 200 … "user-agent"`): what the node
    /// saw, health checks included (their user agent is
    /// `gangway-relay-health`).
    pub fn access_log(&self) -> Vec<String> {
        read_log(&self._dir.path().join("logs/access.log"))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The node id given to [`ConfluenceNode::start`].
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the node now (SIGKILL; also done on drop). On return the port
    /// refuses connections, so a test can take a node down to exercise
    /// failover.
    pub fn stop(&mut self) {
        self.child.stop();
        wait_until_refused(self.addr);
    }
}

/// The whole nginx config of one node. `node_id` is already validated, so
/// it is safe inside strings and the `map` regex.
fn nginx_conf(node_id: &str, port: u16, extra: &str) -> String {
    format!(
        r#"# Written by gangway-tests (peers/nginx.rs): Confluence node {node_id}.
daemon off;
# One process: SIGKILL of the child stops everything, and no privileges are
# dropped (so as root nothing needs to be readable by "nobody").
master_process off;
pid nginx.pid;
error_log logs/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log logs/access.log;
    # The compiled-in temp paths are under /var/lib/nginx.
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    server_tokens off;
    default_type text/plain;

    map $cookie_JSESSIONID $gw_session {{
        "" none;
        default $cookie_JSESSIONID;
    }}
    # A session of this node is a JSESSIONID ending in ".{node_id}".
    map $cookie_JSESSIONID $gw_new {{
        "~\.{node_id}$" 0;
        default 1;
    }}
    # add_header skips empty values: no Set-Cookie for a known session.
    map $gw_new $gw_set_cookie {{
        1 "JSESSIONID=$request_id.{node_id}; Path=/; HttpOnly";
        default "";
    }}

    server {{
        listen 127.0.0.1:{port};
        server_name {PUBLIC_HOST};
        client_max_body_size 0;

        location / {{
            add_header Set-Cookie $gw_set_cookie;
            return 200 "node={node_id} session=$gw_session new=$gw_new\n";
        }}

        location = /headers {{
            return 200 "x-gangway-user=$http_x_gangway_user
x-gangway-groups=$http_x_gangway_groups
x-gangway-assertion=$http_x_gangway_assertion
x-forwarded-for=$http_x_forwarded_for
x-forwarded-proto=$http_x_forwarded_proto
x-forwarded-host=$http_x_forwarded_host
x-forwarded-port=$http_x_forwarded_port
host=$http_host
node={node_id}
";
        }}

        location = /redirect {{
            return 302 {REDIRECT_LOCATION};
        }}

        location = /login {{
            add_header Set-Cookie "{LOGIN_SET_COOKIE}";
            return 200 "node={node_id} login\n";
        }}

        location = /status {{
            default_type application/json;
            return 200 '{STATUS_BODY}';
        }}

        # `return` discards the request body (any size, chunked too).
        location = /upload {{
            return 200 "node={node_id} ok\n";
        }}
{extra}
    }}
}}
"#
    )
}

/// Sends one HTTP/1.0 request and checks the answer names `node_id`, i.e.
/// the port is really served by this nginx and its config does what it should.
fn check_identity(addr: SocketAddr, node_id: &str) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /whoami HTTP/1.0\r\nHost: confluence.example.com\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let expected = format!("\r\n\r\nnode={node_id} session=none new=1\n");
    if !response.ends_with(&expected) {
        bail!("{addr} is not nginx node {node_id}; it answered:\n{response}");
    }
    Ok(())
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
