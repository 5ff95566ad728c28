//! `gangway logout`: revoke the refresh token and delete this
//! environment's tokens, through the running agent when it serves it (its
//! listeners close too).

use std::process::ExitCode;

use gangway_agent::control::Request;
use gangway_agent::signin::{self, SignedOut};

use crate::args::TargetArgs;
use crate::output::{agent_label, frontend_name, print_signed_out};
use crate::running::{agent_for, ask};
use crate::target::Target;

pub async fn run(args: TargetArgs) -> anyhow::Result<ExitCode> {
    if let Some((client, snap)) = agent_for(&args).await {
        if snap.interactive {
            let done: SignedOut = ask(&client, &Request::Logout, |_, _| {}).await?;
            print_signed_out(
                &agent_label(&snap),
                &done,
                Some(frontend_name(snap.frontend)),
            );
            super::git::after_logout();
            return Ok(ExitCode::SUCCESS);
        }
    }
    let target = Target::resolve(&args)?;
    let egress = target.egress()?;
    let keychain = target.keychain().await?;
    let done = signin::sign_out(&target.name(), &target.relay, egress, &keychain).await?;
    print_signed_out(&target.label(), &done, None);
    super::git::after_logout();
    Ok(ExitCode::SUCCESS)
}
