//! Serving the control socket: bind (once per user, under a lock), check
//! each caller's uid, read one request line, answer with progress lines
//! and a final line.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ControlError, ErrorCode, Failure, Reply, Request, MAX_REQUEST};

/// What a handler's future gives back: the `data` of the final reply.
pub type Handled = Pin<Box<dyn Future<Output = Result<serde_json::Value, Failure>> + Send>>;

/// A byte stream a `proxy` connection is joined to.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// The stream a `proxy` request carries.
pub type Carried = Box<dyn Duplex>;

/// What [`Handler::proxy`] gives back: the stream, once the relay took it.
pub type Opening = Pin<Box<dyn Future<Output = Result<Carried, Failure>> + Send>>;

/// Answers control requests (the agent itself, or the tray app around it).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request, progress: Progress) -> Handled;

    /// Opens the stream for a `proxy` request to `service`. By default
    /// this agent carries none.
    fn proxy(&self, service: String) -> Opening {
        let _ = service;
        Box::pin(async {
            Err(Failure::new(
                ErrorCode::Unsupported,
                "this agent cannot carry a proxy stream",
            ))
        })
    }
}

/// Sends progress lines to the client while a request runs.
#[derive(Clone)]
pub struct Progress(mpsc::UnboundedSender<Reply>);

impl Progress {
    /// A sink that drops everything (for calls made without a client).
    pub fn none() -> Self {
        let (tx, _) = mpsc::unbounded_channel();
        Progress(tx)
    }

    pub fn send(&self, message: impl Into<String>, url: Option<String>) {
        let _ = self.0.send(Reply::Progress {
            message: message.into(),
            url,
        });
    }
}

/// The outcome of [`ControlServer::bind`].
pub enum Bound {
    /// This process now owns the socket.
    Serving(ControlServer),
    /// Another live agent of this user already serves it.
    Taken(PathBuf),
}

/// A bound control socket, not yet serving.
pub struct ControlServer {
    #[cfg(unix)]
    listener: tokio::net::UnixListener,
    path: PathBuf,
    #[cfg(unix)]
    _lock: std::fs::File,
}

impl ControlServer {
    /// Binds `path` with mode 0600. For the default path the directory is
    /// created 0700 and must belong to this user.
    pub async fn bind(path: &Path) -> Result<Bound, ControlError> {
        Self::bind_with_mode(path, 0o600).await
    }

    /// [`ControlServer::bind`] with another socket mode (tests only need
    /// this: the uid check is what refuses other users then).
    #[cfg(unix)]
    pub async fn bind_with_mode(path: &Path, mode: u32) -> Result<Bound, ControlError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |detail: String| ControlError::Io {
            path: path.to_path_buf(),
            detail,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if dir == super::default_dir() {
            private_dir(dir)?;
        } else {
            std::fs::create_dir_all(dir).map_err(|e| io(e.to_string()))?;
        }
        let mut lock_name = path.as_os_str().to_os_string();
        lock_name.push(".lock");
        let lock = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock_name)
        }
        .map_err(|e| io(format!("lock file: {e}")))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(Bound::Taken(path.to_path_buf())),
            Err(e) => return Err(io(format!("lock file: {e}"))),
        }
        // We hold the lock: any socket file left is stale.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing the stale socket: {e}"))),
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(|e| io(e.to_string()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io(e.to_string()))?;
        Ok(Bound::Serving(ControlServer {
            listener,
            path: path.to_path_buf(),
            _lock: lock,
        }))
    }

    #[cfg(not(unix))]
    pub async fn bind_with_mode(_path: &Path, _mode: u32) -> Result<Bound, ControlError> {
        Err(ControlError::Unsupported)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `stop`; then removes the socket file.
    pub fn serve(self, handler: Arc<dyn Handler>, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(handler, stop))
    }

    #[cfg(unix)]
    async fn run(self, handler: Arc<dyn Handler>, stop: CancellationToken) {
        let me = super::current_uid();
        let conns = tokio_util::task::TaskTracker::new();
        loop {
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("control socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let handler = handler.clone();
            conns.spawn(async move {
                if let Err(e) = connection(stream, me, handler).await {
                    tracing::debug!("control connection: {e}");
                }
            });
        }
        let _ = std::fs::remove_file(&self.path);
        conns.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
    }

    #[cfg(not(unix))]
    async fn run(self, _handler: Arc<dyn Handler>, _stop: CancellationToken) {}
}

/// Creates `dir` 0700, or checks an existing one is ours and private
/// (tightening its mode if it is ours but open).
#[cfg(unix)]
fn private_dir(dir: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true).mode(0o700);
    b.create(dir).map_err(|e| ControlError::Io {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| ControlError::Io {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    })?;
    if !meta.is_dir() || meta.uid() != super::current_uid() {
        return Err(ControlError::Unsafe(format!(
            "{} is not a directory owned by this user; refusing to put the control socket there",
            dir.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            ControlError::Io {
                path: dir.to_path_buf(),
                detail: e.to_string(),
            }
        })?;
    }
    Ok(())
}

#[cfg(unix)]
async fn connection(
    stream: tokio::net::UnixStream,
    me: u32,
    handler: Arc<dyn Handler>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let peer = write.as_ref().peer_cred()?;
    if peer.uid() != me {
        tracing::warn!(
            peer_uid = peer.uid(),
            peer_pid = ?peer.pid(),
            "control socket: refused a connection from another user"
        );
        let reply = Reply::Error {
            code: ErrorCode::Forbidden,
            message: format!(
                "this Gangway agent belongs to another user (uid {me}); you are uid {}",
                peer.uid()
            ),
        };
        write_reply(&mut write, &reply).await?;
        let _ = write.shutdown().await;
        return Ok(());
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    // (A `proxy` connection takes the read half back out below.)
    let n = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    if n == 0 {
        return Ok(());
    }
    let request = match serde_json::from_str::<Request>(line.trim()) {
        Ok(r) if n <= MAX_REQUEST => r,
        Ok(_) => {
            let reply = bad_request("request too long".into());
            return write_reply(&mut write, &reply).await;
        }
        Err(e) => {
            let reply = bad_request(format!("not a request this agent knows: {e}"));
            return write_reply(&mut write, &reply).await;
        }
    };
    if let Request::Proxy { service } = request {
        // Whatever the client sent after its request line belongs to the
        // stream.
        let early = reader.buffer().to_vec();
        let read = reader.into_inner().into_inner();
        return proxy(read, write, early, handler.proxy(service)).await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut work = handler.handle(request, Progress(tx));
    let last = loop {
        tokio::select! {
            done = &mut work => break match done {
                Ok(data) => Reply::Ok { data },
                Err(f) => Reply::Error { code: f.code, message: f.message },
            },
            Some(p) = rx.recv() => write_reply(&mut write, &p).await?,
        }
    };
    while let Ok(p) = rx.try_recv() {
        write_reply(&mut write, &p).await?;
    }
    write_reply(&mut write, &last).await?;
    let _ = write.shutdown().await;
    Ok(())
}

/// A `proxy` request: the relay's answer as the reply line, then (if it
/// took the stream) bytes both ways until both sides have finished.
#[cfg(unix)]
async fn proxy(
    read: tokio::net::unix::OwnedReadHalf,
    mut write: tokio::net::unix::OwnedWriteHalf,
    early: Vec<u8>,
    opening: Opening,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut stream = match opening.await {
        Ok(s) => s,
        Err(f) => {
            let reply = Reply::Error {
                code: f.code,
                message: f.message,
            };
            write_reply(&mut write, &reply).await?;
            let _ = write.shutdown().await;
            return Ok(());
        }
    };
    write_reply(
        &mut write,
        &Reply::Ok {
            data: serde_json::Value::Null,
        },
    )
    .await?;
    if !early.is_empty() {
        stream.write_all(&early).await?;
    }
    let mut local = read.reunite(write).map_err(std::io::Error::other)?;
    gangway_transport::duplex::splice(&mut local, &mut stream).await?;
    Ok(())
}

fn bad_request(message: String) -> Reply {
    Reply::Error {
        code: ErrorCode::BadRequest,
        message,
    }
}

#[cfg(unix)]
async fn write_reply(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

#[cfg(all(test, unix))]
mod tests {
    use super::super::Client;
    use super::*;

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, request: Request, progress: Progress) -> Handled {
            Box::pin(async move {
                match request {
                    Request::Use { environment } => {
                        progress.send("switching", Some("http://x".into()));
                        Ok(serde_json::json!({ "now": environment }))
                    }
                    _ => Err(Failure::new(ErrorCode::Unsupported, "only use")),
                }
            })
        }
    }

    #[tokio::test]
    async fn one_server_per_path_progress_then_answer_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        assert!(Client::new(&path)
            .request(&Request::Status, |_, _| {})
            .await
            .unwrap()
            .is_none());
        let Bound::Serving(server) = ControlServer::bind(&path).await.unwrap() else {
            panic!("not serving")
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            ControlServer::bind(&path).await.unwrap(),
            Bound::Taken(_)
        ));
        let stop = CancellationToken::new();
        let task = server.serve(Arc::new(Echo), stop.clone());

        let mut seen = Vec::new();
        let data = Client::new(&path)
            .request(
                &Request::Use {
                    environment: "staging".into(),
                },
                |m, u| seen.push((m.to_string(), u.map(str::to_string))),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(data["now"], "staging");
        assert_eq!(
            seen,
            [("switching".to_string(), Some("http://x".to_string()))]
        );

        let e = Client::new(&path)
            .request(&Request::Logout, |_, _| {})
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ControlError::Remote(f) if f.code == ErrorCode::Unsupported),
            "{e}"
        );

        stop.cancel();
        task.await.unwrap();
        assert!(!path.exists(), "socket file left behind");
        // The lock is released with the server: a new one may bind.
        assert!(matches!(
            ControlServer::bind(&path).await.unwrap(),
            Bound::Serving(_)
        ));
    }
}
