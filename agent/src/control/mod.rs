//! The local control API: how `gangway status`, `gangway env use`,
//! `gangway login` and a second start of the tray app talk to the agent
//! that is already running, whether the tray app or `gangway up`.
//!
//! ```text
//! gangway status ──connect──▶ $XDG_RUNTIME_DIR/gangway/agent.sock (0600, dir 0700)
//!                 ◀─ peer uid checked (SO_PEERCRED): other users are refused
//!   {"cmd":"status"}\n  ──▶
//!                      ◀──  {"reply":"progress",…}\n  (zero or more)
//!                      ◀──  {"reply":"ok","data":…}\n  or {"reply":"error",…}\n
//! ```
//!
//! One request per connection, JSON lines. A `proxy` request is the one
//! exception: after its `ok` line the connection carries raw bytes both
//! ways, as one stream in the tunnel to the named service (`gangway
//! ssh-proxy` for SSH's `ProxyCommand`); half-closes pass through.
//!
//! ```text
//!   {"cmd":"proxy","service":"bitbucket-ssh"}\n ──▶
//!                      ◀──  {"reply":"ok","data":null}\n  then bytes ⇄ tunnel stream
//!                      ◀──  or {"reply":"error","code":"failed","message":"…"}\n
//! ``` Whichever process runs the agent
//! serves the socket; an exclusive lock beside it (`agent.sock.lock`) makes
//! sure only one does. Without `XDG_RUNTIME_DIR` the directory is
//! `$TMPDIR/gangway-<uid>/`, created 0700 and checked to be ours.
//! `GANGWAY_CONTROL_SOCKET` names another path (tests, several agents).
//!
//! Windows: a named pipe (`\\.\pipe\gangway-<user>`) is the plan; until
//! then the API reports [`ControlError::Unsupported`] there.

pub mod client;
pub mod handler;
pub mod server;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use client::Client;
pub use handler::{handle_agent_request, open_proxy, serve_control, AgentControl};
pub use server::{Bound, Carried, ControlServer, Handled, Handler, Opening, Progress};

/// Environment variable naming the control socket's path.
pub const SOCKET_ENV: &str = "GANGWAY_CONTROL_SOCKET";

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What a client asks the running agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The agent's state ([`crate::status::Snapshot`]).
    Status,
    /// Switch to another environment: the current one's listeners and
    /// streams are stopped first; tokens stay in the keychain.
    Use { environment: String },
    /// Sign in to the current environment through the browser; progress
    /// replies carry the URL to open.
    Login {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Sign out of the current environment.
    Logout,
    /// Re-read the config file (after `gangway env add|remove`).
    Reload,
    /// Show the status window (tray app only).
    Show,
    /// The tray menu as it is shown now (tray app only).
    Menu,
    /// Do what clicking the tray menu item `id` does (tray app only).
    Activate { id: String },
    /// Carry this connection as one stream to `service` after the `ok`
    /// reply (see the module docs).
    Proxy { service: String },
    /// The local git credential for a URL git asks about (its credential
    /// helper's `protocol` and `host`, which carries the port). Answers
    /// [`GitCredential`] only for this agent's own `http` listeners, else
    /// `null`.
    GitCredential { protocol: String, host: String },
    /// A one-time URL that lets the browser in to `service` (its name or
    /// display name): [`OpenUrl`].
    OpenUrl { service: String },
}

/// The answer to [`Request::GitCredential`]. Carries a secret: never
/// logged; `Debug` hides it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCredential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for GitCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The answer to [`Request::OpenUrl`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenUrl {
    pub service: String,
    pub display_name: String,
    /// Valid once, for about a minute.
    pub url: String,
}

/// One line of the agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Something to tell the user while the request runs.
    Progress {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    /// The request succeeded; the last line.
    Ok {
        #[serde(default)]
        data: serde_json::Value,
    },
    /// The request failed; the last line.
    Error { code: ErrorCode, message: String },
}

/// Why a request failed, for the client to choose its exit code and words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The caller is another user.
    Forbidden,
    /// The request was not understood.
    BadRequest,
    /// This agent cannot do that (e.g. `show` on a headless agent).
    Unsupported,
    /// No such environment (or menu item).
    NotFound,
    /// Another sign-in is waiting for the browser.
    Busy,
    /// The organisation's policy sets this.
    Locked,
    /// Signing in or out did not work.
    SignIn,
    /// Anything else.
    Failed,
}

/// A failed request, as a handler reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Why the control API could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// The running agent answered with an error.
    #[error("{0}")]
    Remote(Failure),
    /// The socket could not be used.
    #[error("control socket {path}: {detail}")]
    Io { path: PathBuf, detail: String },
    /// The socket's directory is not private to this user.
    #[error("{0}")]
    Unsafe(String),
    /// The agent's answer made no sense.
    #[error("control socket {path}: bad answer: {detail}")]
    Protocol { path: PathBuf, detail: String },
    /// Not implemented on this platform yet.
    #[error("the local control API is not available on this platform yet")]
    Unsupported,
}

/// Where the control socket is: `GANGWAY_CONTROL_SOCKET`, else
/// `$XDG_RUNTIME_DIR/gangway/agent.sock`, else `$TMPDIR/gangway-<uid>/agent.sock`.
pub fn socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    default_dir().join("agent.sock")
}

/// The private directory the default socket lives in.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => PathBuf::from(d).join("gangway"),
        None => std::env::temp_dir().join(format!("gangway-{}", current_uid())),
    }
}

/// This process's user id.
#[cfg(unix)]
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

#[cfg(not(unix))]
pub fn current_uid() -> u32 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_json_lines() {
        let r: Request = serde_json::from_str(r#"{"cmd":"use","environment":"prod"}"#).unwrap();
        assert_eq!(
            r,
            Request::Use {
                environment: "prod".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Login { timeout_secs: None }).unwrap(),
            r#"{"cmd":"login"}"#
        );
        let e = Reply::Error {
            code: ErrorCode::Forbidden,
            message: "no".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"reply":"error","code":"forbidden","message":"no"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rm -rf"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Request::Proxy {
                service: "bitbucket-ssh".into()
            })
            .unwrap(),
            r#"{"cmd":"proxy","service":"bitbucket-ssh"}"#
        );
    }

    #[test]
    fn door_requests_are_json_lines_and_the_credential_is_hidden() {
        let r: Request = serde_json::from_str(
            r#"{"cmd":"git_credential","protocol":"http","host":"127.0.0.1:7990"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::GitCredential {
                protocol: "http".into(),
                host: "127.0.0.1:7990".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::OpenUrl {
                service: "confluence".into()
            })
            .unwrap(),
            r#"{"cmd":"open_url","service":"confluence"}"#
        );
        let c = GitCredential {
            username: "gangway".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
