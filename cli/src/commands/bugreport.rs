//! `gangway bugreport [--output FILE]`: the doctor's report, the effective
//! config, versions, the environment Gangway reads and the recent agent
//! logs, redacted, in one `.tar.gz` for a support ticket.

use std::process::ExitCode;

use anyhow::Context;
use gangway_agent::doctor::{self, bugreport::Bugreport, bugreport::Extra};

use crate::args::BugreportArgs;

pub async fn run(args: BugreportArgs) -> anyhow::Result<ExitCode> {
    let probe = super::doctor::probe(&args.config, args.environment)?;
    let report = doctor::run(&probe).await;
    let bundle = Bugreport::collect(&probe, &report, Extra::default()).await;
    let path = match args.output {
        Some(p) => p,
        None => format!(
            "gangway-bugreport-{}.tar.gz",
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        )
        .into(),
    };
    let file = create_private(&path).with_context(|| format!("creating {}", path.display()))?;
    let file = bundle
        .write_tar_gz(file)
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().ok();
    let failed = report
        .checks
        .iter()
        .filter(|c| c.status == doctor::Status::Fail)
        .count();
    eprintln!(
        "Wrote {} ({} checks, {failed} failed). Tokens, secrets and passwords are redacted; attach it to your ticket.",
        path.display(),
        report.checks.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// A new file only its owner can read.
fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}
