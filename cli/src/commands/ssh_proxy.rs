//! `gangway ssh-proxy SERVICE`: SSH's `ProxyCommand`. Standard input and
//! output become one stream in the running agent's tunnel to SERVICE,
//! through the control socket (private to this user), so git over SSH
//! needs no local port at all.
//!
//! ```text
//! ssh ─stdin/stdout─▶ gangway ssh-proxy ─control socket─▶ agent ─tunnel stream─▶ relay ─▶ sshd
//! ```

use std::process::ExitCode;

use anyhow::bail;
use gangway_agent::control::Client;

pub async fn run(service: String) -> anyhow::Result<ExitCode> {
    let client = Client::default_path();
    let mut socket = match client.proxy(&service).await {
        Ok(Some(s)) => s,
        Ok(None) => bail!(
            "no Gangway agent is running for this user (looked at {}); start the tray app or \
             `gangway up`",
            client.path().display()
        ),
        Err(e) => bail!("{e}"),
    };
    let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    // EOF on stdin (ssh is done sending) half-closes the stream; the
    // server's EOF ends stdout; we return when both have ended.
    gangway_transport::duplex::splice(&mut stdio, &mut socket).await?;
    Ok(ExitCode::SUCCESS)
}
