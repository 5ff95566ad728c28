//! What the tests that talk to a running agent share: its state through
//! the control API, for the agent a [`World`]'s processes run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gangway_agent::control::{Client, Request};
use gangway_agent::status::Snapshot;
use gangway_tests::world::World;

/// The control API of the agent serving a [`World`].
pub trait Control {
    /// The control socket the agent serves.
    fn control(&self) -> Client;

    /// The running agent's state.
    async fn status(&self) -> Result<Snapshot> {
        let v = self
            .control()
            .request(&Request::Status, |_, _| {})
            .await?
            .context("no agent serves the control socket")?;
        Ok(serde_json::from_value(v)?)
    }

    /// Polls the agent's state until `f` holds.
    async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Snapshot) -> bool,
    ) -> Result<Snapshot> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status().await {
                if f(&s) {
                    return Ok(s);
                }
                if Instant::now() > deadline {
                    bail!("timed out waiting for {what}; last state: {s:#?}");
                }
            } else if Instant::now() > deadline {
                bail!("timed out waiting for {what}; the agent does not answer");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Control for World {
    fn control(&self) -> Client {
        Client::new(&self.runtime_dir().join("gangway/agent.sock"))
    }
}

/// The local address of `service` in `s`.
#[allow(dead_code)] // not every test file that shares this module uses it
pub fn addr_of(s: &Snapshot, service: &str) -> Option<SocketAddr> {
    s.services
        .iter()
        .find(|x| x.name == service)
        .and_then(|x| x.local_addr.as_deref())
        .and_then(|a| a.parse().ok())
}
