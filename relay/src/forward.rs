//! Backend choice and connection for `tcp`-forwarded streams.
//!
//! The same backend pool as http services ([`crate::backends`]):
//! round robin over nodes that are not ejected; a node that refuses a
//! connection is skipped for a while and the next one is tried.

use tokio::net::TcpStream;

use crate::backends::{self, Pool as Balancer};
use crate::config::{Balance, ServiceConfig};

/// The nodes of one tcp service.
#[derive(Debug)]
pub struct Pool {
    nodes: Balancer,
}

/// Why no backend could be reached.
#[derive(Debug, thiserror::Error)]
#[error("no backend of {service} answered (last: {last_backend}: {last_error})")]
pub struct ConnectError {
    pub service: String,
    pub last_backend: String,
    pub last_error: String,
}

impl Pool {
    pub fn new(svc: &ServiceConfig) -> Self {
        Self {
            nodes: Balancer::new(&svc.backends, Balance::RoundRobin),
        }
    }

    /// The nodes, for health and drain.
    pub fn nodes(&self) -> &Balancer {
        &self.nodes
    }

    /// Connects to the next available backend, trying each at most once.
    pub async fn connect(&self, svc: &ServiceConfig) -> Result<(TcpStream, String), ConnectError> {
        let mut tried: Vec<String> = Vec::new();
        let mut last = (String::new(), "every backend is marked down".to_string());
        while let Some(pick) = self.nodes.pick(None, &tried) {
            let backend = pick.backend;
            tried.push(backend.addr.clone());
            match backends::connect(&backend.addr, svc.connect_timeout).await {
                Ok(stream) => return Ok((stream, backend.addr.clone())),
                Err(e) => last = (backend.addr.clone(), e.to_string()),
            }
            backend.eject(backends::PASSIVE_EJECT);
        }
        Err(ConnectError {
            service: svc.name.clone(),
            last_backend: last.0,
            last_error: last.1,
        })
    }
}
