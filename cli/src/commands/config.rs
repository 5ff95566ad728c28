//! `gangway config --effective [--json]`: every setting in effect, where
//! its value comes from and whether the organisation locks it.

use std::process::ExitCode;

use gangway_agent::config::{AgentConfig, Source};
use gangway_agent::keychain::namespace_for;

use crate::args::ConfigShowArgs;

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Policy => "policy (locked)",
        Source::Recommended => "recommended",
        Source::UserFile => "your config file",
        Source::Default => "default",
    }
}

pub fn run(args: ConfigShowArgs) -> anyhow::Result<ExitCode> {
    let path = args.config.path()?;
    let config = AgentConfig::load(&path)?;
    if args.json {
        let envs: Vec<_> = config
            .environments
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "relay": namespace_for(&e.relay),
                    "ca_file": e.ca_file,
                    "source": e.source,
                    "origin": e.origin,
                    "locked": e.locked(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "config_file": path,
            "settings": config.settings.table,
            "environments": envs,
            "problems": config.problems,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Your config file: {}", path.display());
    for s in &config.settings.table {
        let value = match &s.value {
            serde_json::Value::Null => "(not set)".to_string(),
            serde_json::Value::String(v) => v.clone(),
            other => other.to_string(),
        };
        let origin = s
            .origin
            .as_deref()
            .map(|o| format!(" — {o}"))
            .unwrap_or_default();
        println!(
            "  {:<34} {:<40} {}{origin}",
            s.key,
            value,
            source_name(s.source)
        );
    }
    if !config.environments.is_empty() {
        println!("Environments:");
        for e in &config.environments {
            println!(
                "  {:<14} {:<40} {}",
                e.name,
                namespace_for(&e.relay),
                source_name(e.source)
            );
        }
    }
    for p in &config.problems {
        eprintln!("warning: {p}");
    }
    Ok(ExitCode::SUCCESS)
}
