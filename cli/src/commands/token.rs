//! `gangway token`: print a current access token (refreshed if needed), for
//! scripts.

use std::process::ExitCode;

use gangway_agent::signin::Credentials;

use crate::args::TargetArgs;
use crate::target::Target;

pub async fn run(args: TargetArgs) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args)?;
    let egress = target.egress()?;
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
