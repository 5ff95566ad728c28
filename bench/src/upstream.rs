//! The servers every path ends at: nginx serving a small static file, an
//! iperf3 server, an in-process echo server and, when the git figures are
//! measured, lighttpd serving a generated repository over smart HTTP
//! ([`crate::git`]).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::git::GitServer;
use crate::procs::{free_port, localhost, Proc};

/// Size of the static file wrk fetches.
pub const SMALL_FILE_BYTES: usize = 1024;
/// Path of that file on nginx.
pub const SMALL_FILE_PATH: &str = "/small.html";

/// Where each workload connects: the same services on every path.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// HTTP (nginx, or a tunnel to it), carried as plain TCP.
    pub web: SocketAddr,
    /// nginx through Gangway's `kind = "http"` service, where the relay
    /// proxies each request (parses it, adds identity headers and a signed
    /// assertion, writes an audit line). None on other paths.
    pub web_http: Option<SocketAddr>,
    /// iperf3 server, or a tunnel to it.
    pub iperf: SocketAddr,
    /// Echo server, or a tunnel to it.
    pub echo: SocketAddr,
    /// lighttpd + `git http-backend`, or a tunnel to it (through Gangway a
    /// `kind = "http"` service, as Bitbucket is carried). None when the git
    /// figures are not measured.
    pub git: Option<SocketAddr>,
}

/// The upstream servers; stopped on drop.
pub struct Upstreams {
    pub addrs: Endpoints,
    /// The generated repository and its server, if the git figures are
    /// measured.
    pub git: Option<GitServer>,
    _nginx: Proc,
    _iperf: Proc,
    echo: tokio::task::JoinHandle<()>,
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        self.echo.abort();
    }
}

impl Upstreams {
    /// Starts nginx and iperf3 (from PATH) and the echo server, and with
    /// `with_git` generates the git repository and starts lighttpd; their
    /// files and logs are under `dir`.
    pub async fn start(dir: &Path, with_git: bool) -> anyhow::Result<Self> {
        let echo_listener = tokio::net::TcpListener::bind(localhost(0)).await?;
        let echo_addr = echo_listener.local_addr()?;
        let echo = tokio::spawn(echo_server(echo_listener));

        let nginx_port = free_port()?;
        let mut nginx = start_nginx(dir, nginx_port)?;
        nginx
            .wait_listening(nginx_port, Duration::from_secs(10))
            .await?;

        let iperf_port = free_port()?;
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-B", "127.0.0.1", "-p", &iperf_port.to_string()]);
        let mut iperf = Proc::spawn("iperf3-server", cmd, dir)?;
        iperf
            .wait_listening(iperf_port, Duration::from_secs(10))
            .await?;

        let git = if with_git {
            Some(GitServer::start(dir).await?)
        } else {
            None
        };

        Ok(Self {
            addrs: Endpoints {
                web: localhost(nginx_port),
                web_http: None,
                iperf: localhost(iperf_port),
                echo: echo_addr,
                git: git.as_ref().map(|g| g.addr),
            },
            git,
            _nginx: nginx,
            _iperf: iperf,
            echo,
        })
    }
}

/// Just nginx (the small file) and the echo server, for the sessions
/// bench; stopped on drop.
pub struct WebAndEcho {
    /// nginx.
    pub web: SocketAddr,
    /// The in-process echo server.
    pub echo: SocketAddr,
    _nginx: Proc,
    echo_task: tokio::task::JoinHandle<()>,
}

impl Drop for WebAndEcho {
    fn drop(&mut self) {
        self.echo_task.abort();
    }
}

impl WebAndEcho {
    /// Starts nginx (from PATH) and the echo server; nginx's files and
    /// logs are under `dir`.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let echo_listener = tokio::net::TcpListener::bind(localhost(0)).await?;
        let echo = echo_listener.local_addr()?;
        let echo_task = tokio::spawn(echo_server(echo_listener));
        let nginx_port = free_port()?;
        let mut nginx = start_nginx(dir, nginx_port)?;
        nginx
            .wait_listening(nginx_port, Duration::from_secs(10))
            .await?;
        Ok(Self {
            web: localhost(nginx_port),
            echo,
            _nginx: nginx,
            echo_task,
        })
    }
}

/// nginx in the foreground (`daemon off`), one worker, no access log, all
/// its files under `dir/nginx`.
fn start_nginx(dir: &Path, port: u16) -> anyhow::Result<Proc> {
    let root = dir.join("nginx");
    let www = root.join("www");
    std::fs::create_dir_all(root.join("tmp"))?;
    std::fs::create_dir_all(&www)?;
    let body: String = "gangway bench static file\n"
        .chars()
        .cycle()
        .take(SMALL_FILE_BYTES)
        .collect();
    std::fs::write(www.join(SMALL_FILE_PATH.trim_start_matches('/')), body)?;
    // Workers may run as an unprivileged user: let them read the files.
    open_up(dir)?;
    open_up(&root)?;
    open_up(&www)?;
    let r = root.display();
    let conf = format!(
        r#"worker_processes 1;
daemon off;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {r}/tmp/body;
    proxy_temp_path {r}/tmp/proxy;
    fastcgi_temp_path {r}/tmp/fastcgi;
    uwsgi_temp_path {r}/tmp/uwsgi;
    scgi_temp_path {r}/tmp/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location / {{ }}
    }}
}}
"#,
        www = www.display()
    );
    let conf_path = root.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(&root)
        .arg("-e")
        .arg(root.join("error.log"))
        .arg("-c")
        .arg(&conf_path);
    Proc::spawn("nginx", cmd, dir)
}

fn open_up(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", p.display()))
}

/// Echoes every byte back until the client closes.
async fn echo_server(listener: TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tcp.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = tcp.shutdown().await;
        });
    }
}
