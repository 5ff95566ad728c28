//! The running agent behind the control API: each [`Request`] every agent
//! understands, answered from an [`Agent`], and the one mapping from an
//! [`AgentError`] to the [`ErrorCode`] a client acts on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{socket_path, Bound, ControlError, ControlServer, ErrorCode, Failure};
use super::{Carried, GitCredential, Handled, Handler, OpenUrl, Opening, Progress, Request};
use crate::agent::Agent;
use crate::door::http::local_authority;
use crate::relay_api::ServiceKind;
use crate::AgentError;

/// How long a `login` request waits for the browser when it names no time.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

impl From<&AgentError> for ErrorCode {
    fn from(e: &AgentError) -> Self {
        match e {
            AgentError::UnknownEnvironment { .. } => ErrorCode::NotFound,
            AgentError::SignInInProgress { .. } => ErrorCode::Busy,
            AgentError::Locked { .. } => ErrorCode::Locked,
            AgentError::SignIn(_)
            | AgentError::Unauthorized(_)
            | AgentError::NoToken(_)
            | AgentError::SignedInButRefused { .. }
            | AgentError::FixedToken => ErrorCode::SignIn,
            _ => ErrorCode::Failed,
        }
    }
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Self {
        Failure::new(ErrorCode::from(&e), e.to_string())
    }
}

/// The agent as a control-API handler (the headless `gangway up`; the tray
/// wraps it to add window and menu requests).
pub struct AgentControl(pub Agent);

impl Handler for AgentControl {
    fn handle(&self, request: Request, progress: Progress) -> Handled {
        let agent = self.0.clone();
        Box::pin(async move { handle_agent_request(&agent, request, progress).await })
    }

    fn proxy(&self, service: String) -> Opening {
        let agent = self.0.clone();
        Box::pin(async move { open_proxy(&agent, &service).await })
    }
}

/// Opens the stream of a `proxy` request on `agent`'s current environment;
/// the relay's refusal comes back in plain words.
pub async fn open_proxy(agent: &Agent, service: &str) -> Result<Carried, Failure> {
    match agent.open_stream(service).await {
        Ok(stream) => Ok(Box::new(stream)),
        Err(e) => {
            let code = ErrorCode::from(&e);
            let message = match &e {
                AgentError::Refused(r) => {
                    let plain = crate::listener::plain_problem(service, &e)
                        .unwrap_or_else(|| e.to_string());
                    format!(
                        "the relay refused the stream to {service}: {plain} ({})",
                        r.message
                    )
                }
                other => format!("cannot open a stream to {service}: {other}"),
            };
            Err(Failure::new(code, message))
        }
    }
}

/// Answers the requests every agent understands.
pub async fn handle_agent_request(
    agent: &Agent,
    request: Request,
    progress: Progress,
) -> Result<serde_json::Value, Failure> {
    fn json(v: impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
    }
    match request {
        Request::Status => Ok(json(agent.snapshot())),
        Request::Use { environment } => {
            agent.use_environment(&environment).await?;
            Ok(json(agent.snapshot()))
        }
        Request::Login { timeout_secs } => {
            let timeout = timeout_secs.map_or(LOGIN_TIMEOUT, Duration::from_secs);
            let p = progress.clone();
            let done = agent
                .sign_in(timeout, move |url| {
                    p.send("Open this page to sign in", Some(url.to_string()));
                })
                .await?;
            Ok(json(done))
        }
        Request::Logout => Ok(json(agent.sign_out().await?)),
        Request::Reload => {
            agent.reload()?;
            agent.nudge();
            Ok(json(agent.snapshot()))
        }
        Request::Proxy { .. } => Err(Failure::new(
            ErrorCode::BadRequest,
            "a proxy request is carried by its own connection",
        )),
        Request::GitCredential { protocol, host } => {
            Ok(json(git_credential(agent, &protocol, &host)))
        }
        Request::OpenUrl { service } => open_url(agent, &service).map(json),
        Request::Show | Request::Menu | Request::Activate { .. } => Err(Failure::new(
            ErrorCode::Unsupported,
            "this agent is `gangway up` (no tray, no window)",
        )),
    }
}

/// The `http` services this agent listens for now: (name, display name,
/// port).
fn http_listeners(agent: &Agent) -> Vec<(String, String, u16)> {
    agent
        .snapshot()
        .services
        .into_iter()
        .filter(|s| s.kind == ServiceKind::Http)
        .filter_map(|s| {
            let addr: std::net::SocketAddr = s.local_addr.as_deref()?.parse().ok()?;
            Some((s.name, s.display_name, addr.port()))
        })
        .collect()
}

/// The local git credential, if `protocol://host` is one of this agent's
/// `http` listeners.
fn git_credential(agent: &Agent, protocol: &str, host: &str) -> Option<GitCredential> {
    if protocol != "http" {
        return None;
    }
    http_listeners(agent)
        .iter()
        .any(|(_, _, port)| local_authority(host.as_bytes(), *port))
        .then(|| GitCredential {
            username: "gangway".into(),
            password: agent.door().secrets().git_secret(),
        })
}

/// A one-time URL for `service` (name or display name, any case).
fn open_url(agent: &Agent, service: &str) -> Result<OpenUrl, Failure> {
    let listeners = http_listeners(agent);
    let found = listeners.iter().find(|(name, display, _)| {
        name.eq_ignore_ascii_case(service) || display.eq_ignore_ascii_case(service)
    });
    let Some((name, display_name, port)) = found else {
        let known: Vec<&str> = listeners.iter().map(|(n, _, _)| n.as_str()).collect();
        return Err(Failure::new(
            ErrorCode::NotFound,
            if known.is_empty() {
                format!("{service} is not available now (no web service is listening)")
            } else {
                format!(
                    "{service} is not available now (web services: {})",
                    known.join(", ")
                )
            },
        ));
    };
    let token = agent.door().secrets().one_time_token(*port);
    Ok(OpenUrl {
        service: name.clone(),
        display_name: display_name.clone(),
        url: crate::door::http::open_url(*port, &token),
    })
}

/// Serves the control API for `handler` at the default path (or
/// `GANGWAY_CONTROL_SOCKET`). `Ok(None)`: another agent already serves it.
pub async fn serve_control(
    handler: Arc<dyn Handler>,
    stop: CancellationToken,
) -> Result<Option<(PathBuf, JoinHandle<()>)>, ControlError> {
    let path = socket_path();
    match ControlServer::bind(&path).await? {
        Bound::Serving(server) => {
            let p = server.path().to_path_buf();
            Ok(Some((p, server.serve(handler, stop))))
        }
        Bound::Taken(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_come_from_the_error_kind_not_its_text() {
        let unknown = AgentError::UnknownEnvironment {
            name: "nope".into(),
            known: vec!["prod".into()],
        };
        assert_eq!(ErrorCode::from(&unknown), ErrorCode::NotFound);
        let busy = AgentError::SignInInProgress {
            url: "https://idp/auth".into(),
        };
        assert_eq!(ErrorCode::from(&busy), ErrorCode::Busy);
        assert_eq!(ErrorCode::from(&AgentError::FixedToken), ErrorCode::SignIn);
        // A config error that happens to mention a missing environment is
        // still just a failure.
        let config =
            AgentError::Config("c.toml: default_environment: no environment named \"x\"".into());
        assert_eq!(ErrorCode::from(&config), ErrorCode::Failed);
        let f = Failure::from(unknown);
        assert_eq!(f.message, "no environment named \"nope\" (known: prod)");
    }
}
