//! One stream to a service on the current environment's tunnel, for a
//! program that carries its own bytes (`gangway ssh-proxy` through the
//! control socket) instead of connecting to a local listener.

use gangway_transport::Stream;
use gangway_wire::RefusalCode;

use super::Agent;
use crate::pipelined::PipelinedStream;
use crate::session::local_refusal;
use crate::AgentError;

impl Agent {
    /// Opens a stream to `service` on the current environment's tunnel
    /// (waiting up to the connect wait for it to come up) and waits for the
    /// relay's answer: accepted, or refused with its reason. A service the
    /// catalog does not list is refused here, without asking the relay.
    pub async fn open_stream(&self, service: &str) -> Result<PipelinedStream<Stream>, AgentError> {
        let (tunnel, catalog, env) = {
            let st = self.lock();
            let run = st.run.as_ref().ok_or(AgentError::NoEnvironment)?;
            (
                run.tunnel.clone(),
                run.catalog.clone(),
                run.env.name.clone(),
            )
        };
        if let Some(c) = &catalog {
            if !c.services.iter().any(|s| s.name == service) {
                let known: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
                return Err(AgentError::Refused(local_refusal(
                    RefusalCode::UnknownService,
                    format!(
                        "{env} offers no service named {service:?} (known: {})",
                        known.join(", ")
                    ),
                )));
            }
        }
        let tunnel = tunnel.ok_or_else(|| {
            AgentError::unreachable(format!("{env} is not connected yet (see `gangway status`)"))
        })?;
        let session = tunnel.session(self.inner.opts.connect_wait).await?;
        session.open(service).await
    }
}
