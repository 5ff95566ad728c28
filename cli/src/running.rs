//! Talking to the agent that already runs (the tray app or `gangway up`)
//! through its control socket.

use anyhow::{bail, Context};
use gangway_agent::control::{Client, Request};
use gangway_agent::keychain::namespace_for;
use gangway_agent::status::Snapshot;
use serde::de::DeserializeOwned;

use crate::args::TargetArgs;
use crate::target::Target;

/// The running agent's status, if one runs.
pub async fn snapshot() -> Option<Snapshot> {
    match Client::default_path()
        .request(&Request::Status, |_, _| {})
        .await
    {
        Ok(Some(v)) => serde_json::from_value(v).ok(),
        _ => None,
    }
}

/// The running agent, if it serves the environment `args` names (any, when
/// none is named).
pub async fn agent_for(args: &TargetArgs) -> Option<(Client, Snapshot)> {
    let client = Client::default_path();
    let value = match client.request(&Request::Status, |_, _| {}).await {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(e) => {
            eprintln!("note: cannot ask the running Gangway agent ({e}); going on without it");
            return None;
        }
    };
    let snap: Snapshot = serde_json::from_value(value).ok()?;
    if args.relay.is_none() && args.environment.is_none() {
        return Some((client, snap));
    }
    let target = Target::resolve(args).ok()?;
    let relay = namespace_for(&target.relay);
    (snap.relay.as_deref() == Some(relay.as_str())).then_some((client, snap))
}

/// Sends `request` and decodes the answer; `on_progress` sees each
/// progress line (its text and URL).
pub async fn ask<T: DeserializeOwned>(
    client: &Client,
    request: &Request,
    on_progress: impl FnMut(&str, Option<&str>),
) -> anyhow::Result<T> {
    match client.request(request, on_progress).await {
        Ok(Some(v)) => serde_json::from_value(v).context("the agent's answer"),
        Ok(None) => bail!("the running agent went away"),
        Err(e) => bail!("{e}"),
    }
}

/// Asks the running agent to re-read its config (a note if it cannot).
pub async fn reload() {
    if let Err(e) = Client::default_path()
        .request(&Request::Reload, |_, _| {})
        .await
    {
        eprintln!("note: the running agent did not reload its config: {e}");
    }
}
