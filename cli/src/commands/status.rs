//! `gangway status`: what the running agent reports, or else what the
//! keychain holds for the environment (read only, nothing verified).

use std::process::ExitCode;

use gangway_agent::signin::{self, SignInStatus};

use crate::args::StatusArgs;
use crate::output::{print_agent_status, print_expiry, print_refresh};
use crate::running::agent_for;
use crate::target::Target;

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let args = args.target;
    if let Some((_, snap)) = agent_for(&args).await {
        if json {
            println!("{}", serde_json::to_string_pretty(&snap)?);
            return Ok(ExitCode::SUCCESS);
        }
        return Ok(print_agent_status(&snap));
    }
    if json {
        println!("{}", serde_json::json!({ "running": false }));
        return Ok(ExitCode::FAILURE);
    }
    let target = Target::resolve(&args)?;
    let keychain = target.keychain().await?;
    println!("Environment: {}", target.label());
    match signin::status(&keychain).await? {
        SignInStatus::SignedIn {
            subject,
            issuer,
            expires_at,
            refreshable,
        } => {
            let who = subject.unwrap_or_else(|| "(unknown user)".into());
            if issuer.is_empty() {
                println!("Signed in as {who}");
            } else {
                println!("Signed in as {who} (identity provider {issuer})");
            }
            if let Some(exp) = expires_at {
                print_expiry(exp);
            }
            print_refresh(refreshable, &target.login_hint);
            if let Ok(b) = gangway_agent::dpop::binding(&keychain).await {
                println!("Token binding: {}", b.describe());
            }
            Ok(ExitCode::SUCCESS)
        }
        SignInStatus::SignInNeeded(why) => {
            println!("Sign-in needed: {why}");
            println!("Run: {}", target.login_hint);
            Ok(ExitCode::FAILURE)
        }
        SignInStatus::NotSignedIn => {
            println!("Not signed in. Run: {}", target.login_hint);
            Ok(ExitCode::FAILURE)
        }
    }
}
