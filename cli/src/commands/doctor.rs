//! `gangway doctor [--env NAME] [--json]`: every piece Gangway relies on,
//! checked (the checks live in the agent library, `doctor`, so the tray
//! runs the same ones). Exit code 1 when any check fails.

use std::process::ExitCode;

use gangway_agent::doctor::{self, Inputs, Probe};

use crate::args::DoctorArgs;

/// The probe for this installation: the user's config, the computer's
/// policy, the OS keychain, the running agent; git's helper must name
/// this program.
pub fn probe(
    config: &crate::args::ConfigArgs,
    environment: Option<String>,
) -> anyhow::Result<Probe> {
    let mut inputs = Inputs::system(config.path()?, environment);
    inputs.git_helper = std::env::current_exe()
        .ok()
        .map(|exe| super::git::helper_value(&exe));
    Ok(Probe::new(inputs))
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let probe = probe(&args.config, args.environment)?;
    let report = doctor::run(&probe).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
