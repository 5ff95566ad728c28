//! Asking the running agent: connect, send one request line, read progress
//! lines until the final one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ControlError, Reply, Request};

/// A client for the control socket at one path.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: &Path) -> Self {
        Client {
            path: path.to_path_buf(),
        }
    }

    /// The client for [`super::socket_path`].
    pub fn default_path() -> Self {
        Self::new(&super::socket_path())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `request`; `progress` sees each progress line (message, URL).
    /// `Ok(None)` when no agent is running (no socket, or nobody listening).
    #[cfg(unix)]
    pub async fn request(
        &self,
        request: &Request,
        mut progress: impl FnMut(&str, Option<&str>),
    ) -> Result<Option<serde_json::Value>, ControlError> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let io = |e: std::io::Error| ControlError::Io {
            path: self.path.clone(),
            detail: e.to_string(),
        };
        let stream = match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::UnixStream::connect(&self.path),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Ok(Err(e)) => return Err(io(e)),
            Err(_) => {
                return Err(ControlError::Io {
                    path: self.path.clone(),
                    detail: "the agent did not accept the connection".into(),
                })
            }
        };
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).expect("requests serialize");
        line.push(b'\n');
        // A refusing agent may close before reading: its answer still counts.
        let _ = write.write_all(&line).await;
        let mut lines = BufReader::new(read).lines();
        loop {
            let Some(text) = lines.next_line().await.map_err(io)? else {
                return Err(ControlError::Protocol {
                    path: self.path.clone(),
                    detail: "the agent closed the connection without answering".into(),
                });
            };
            let reply: Reply = serde_json::from_str(&text).map_err(|e| ControlError::Protocol {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
            match reply {
                Reply::Progress { message, url } => progress(&message, url.as_deref()),
                Reply::Ok { data } => return Ok(Some(data)),
                Reply::Error { code, message } => {
                    return Err(ControlError::Remote(super::Failure { code, message }))
                }
            }
        }
    }

    /// Sends a `proxy` request for `service`; once the agent said ok, the
    /// returned socket carries the stream's bytes both ways. `Ok(None)`
    /// when no agent is running.
    #[cfg(unix)]
    pub async fn proxy(
        &self,
        service: &str,
    ) -> Result<Option<tokio::net::UnixStream>, ControlError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let io = |e: std::io::Error| ControlError::Io {
            path: self.path.clone(),
            detail: e.to_string(),
        };
        let mut stream = match tokio::net::UnixStream::connect(&self.path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(io(e)),
        };
        let request = Request::Proxy {
            service: service.to_string(),
        };
        let mut line = serde_json::to_vec(&request).expect("requests serialize");
        line.push(b'\n');
        let _ = stream.write_all(&line).await;
        // Read the reply a byte at a time: what follows its newline is the
        // stream's, and must stay in the socket.
        loop {
            let mut text = Vec::new();
            loop {
                let mut b = [0u8; 1];
                if stream.read(&mut b).await.map_err(io)? == 0 {
                    return Err(ControlError::Protocol {
                        path: self.path.clone(),
                        detail: "the agent closed the connection without answering".into(),
                    });
                }
                if b[0] == b'\n' {
                    break;
                }
                if text.len() >= super::MAX_REQUEST {
                    return Err(ControlError::Protocol {
                        path: self.path.clone(),
                        detail: "reply too long".into(),
                    });
                }
                text.push(b[0]);
            }
            let reply: Reply =
                serde_json::from_slice(&text).map_err(|e| ControlError::Protocol {
                    path: self.path.clone(),
                    detail: e.to_string(),
                })?;
            match reply {
                Reply::Progress { .. } => continue,
                Reply::Ok { .. } => return Ok(Some(stream)),
                Reply::Error { code, message } => {
                    return Err(ControlError::Remote(super::Failure { code, message }))
                }
            }
        }
    }

    /// No control socket on this platform yet.
    #[cfg(not(unix))]
    pub async fn proxy(
        &self,
        _service: &str,
    ) -> Result<Option<tokio::net::TcpStream>, ControlError> {
        Err(ControlError::Unsupported)
    }

    #[cfg(not(unix))]
    pub async fn request(
        &self,
        _request: &Request,
        _progress: impl FnMut(&str, Option<&str>),
    ) -> Result<Option<serde_json::Value>, ControlError> {
        Ok(None)
    }
}
