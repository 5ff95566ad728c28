//! The demo's Bitbucket stand-in: git's own smart HTTP server, `git
//! http-backend`, run as a CGI program for each request, so the demo still
//! needs nothing but git. Repositories are served at `/scm/<project>/<repo>.git`
//! as on Bitbucket.
//!
//! Loopback only, one demo user: every request runs as `demo-user`, which
//! lets `git push` in (http-backend enables receive-pack for an
//! authenticated `REMOTE_USER`).

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The path prefix Bitbucket serves git under.
pub const PREFIX: &str = "/scm";

/// Longest CGI header block accepted from http-backend.
const MAX_CGI_HEADERS: usize = 64 * 1024;

type Body = BoxBody<Bytes, std::io::Error>;

struct Backend {
    git: PathBuf,
    root: PathBuf,
}

/// Serves `root`'s repositories over smart HTTP until `stop`.
pub async fn serve(listener: TcpListener, git: PathBuf, root: PathBuf, stop: CancellationToken) {
    let backend = Arc::new(Backend { git, root });
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        let backend = backend.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let backend = backend.clone();
                async move { Ok::<_, Infallible>(backend.handle(req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{text}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `/scm/demo/demo.git/info/refs` → `/demo/demo.git/info/refs`; `None`
/// for anything outside the prefix or with `.`/`..` segments.
fn path_info(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(PREFIX)?;
    if !rest.starts_with('/') || rest.split('/').any(|s| s == ".." || s == ".") {
        return None;
    }
    Some(rest)
}

impl Backend {
    async fn handle(&self, req: Request<Incoming>, peer: std::net::SocketAddr) -> Response<Body> {
        let Some(info) = path_info(req.uri().path()) else {
            return plain(
                StatusCode::NOT_FOUND,
                "not a repository path (try /scm/demo/demo.git)",
            );
        };
        match self.run(info.to_string(), req, peer).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("git http-backend: {e}");
                plain(StatusCode::BAD_GATEWAY, &format!("git http-backend: {e}"))
            }
        }
    }

    async fn run(
        &self,
        info: String,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> std::io::Result<Response<Body>> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut cmd = tokio::process::Command::new(&self.git);
        cmd.arg("http-backend")
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("REQUEST_METHOD", req.method().as_str())
            .env("PATH_INFO", &info)
            .env("QUERY_STRING", req.uri().query().unwrap_or(""))
            .env("REMOTE_USER", "demo-user")
            .env("REMOTE_ADDR", peer.ip().to_string())
            .env("GATEWAY_INTERFACE", "CGI/1.1")
            .env("SERVER_PROTOCOL", "HTTP/1.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (var, name) in [
            ("CONTENT_TYPE", "content-type"),
            ("CONTENT_LENGTH", "content-length"),
            ("HTTP_CONTENT_ENCODING", "content-encoding"),
            ("GIT_PROTOCOL", "git-protocol"),
        ] {
            if let Some(v) = header(name) {
                cmd.env(var, v);
            }
        }
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");

        // The request body goes to its stdin as it arrives; EOF ends it.
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                if let Ok(data) = frame.into_data() {
                    if stdin.write_all(&data).await.is_err() {
                        return;
                    }
                }
            }
            let _ = stdin.shutdown().await;
        });

        // CGI answer: header lines, an empty line, then the body.
        let mut out = BufReader::new(stdout);
        let mut resp = Response::builder();
        let mut status = StatusCode::OK;
        let mut seen = 0usize;
        loop {
            let mut line = String::new();
            let n = out.read_line(&mut line).await?;
            seen += n;
            if n == 0 || seen > MAX_CGI_HEADERS {
                return Err(std::io::Error::other("no complete CGI header"));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(std::io::Error::other(format!(
                    "bad CGI header line {line:?}"
                )));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("status") {
                let code = value.split_whitespace().next().unwrap_or("");
                status = code
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| std::io::Error::other(format!("bad CGI status {value:?}")))?;
            } else {
                resp = resp.header(name, value);
            }
        }
        // The child is reaped when its output ends.
        let stream = tokio_util::io::ReaderStream::new(out).map(|r| r.map(Frame::data));
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        resp.status(status)
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::path_info;

    #[test]
    fn only_repository_paths_under_the_prefix_reach_git() {
        assert_eq!(
            path_info("/scm/demo/demo.git/info/refs"),
            Some("/demo/demo.git/info/refs")
        );
        assert_eq!(path_info("/scm"), None);
        assert_eq!(path_info("/scmx/a"), None);
        assert_eq!(path_info("/other/demo.git"), None);
        assert_eq!(path_info("/scm/../etc/passwd"), None);
        assert_eq!(path_info("/scm/demo/./demo.git"), None);
    }
}
