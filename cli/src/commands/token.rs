//! `gangway token`: print a current access token (refreshed if needed), for
//! scripts.

use std::process::ExitCode;

use gangway_agent::signin::{Credentials, ServiceAccount};

use crate::args::TokenArgs;
use crate::target::Target;

pub async fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args.target)?;
    let egress = target.egress()?;
    if let Some(creds) = args.service.credentials()? {
        let account = ServiceAccount::new(target.relay.clone(), egress, creds);
        println!("{}", account.current().await?.token.expose());
        return Ok(ExitCode::SUCCESS);
    }
    let keychain = target.keychain().await?;
    let creds = Credentials::new(
        target.relay.clone(),
        egress,
        keychain,
        target.login_hint.clone(),
    );
    let t = creds.current().await?;
    println!("{}", t.token.expose());
    Ok(ExitCode::SUCCESS)
}
