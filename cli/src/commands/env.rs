//! `gangway env list|use|add|remove`: the environments of the user config
//! file, edited in place (comments kept); a running agent is told.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use gangway_agent::config::AgentConfig;
use gangway_agent::control::{Client, Request};
use gangway_agent::keychain::namespace_for;
use gangway_agent::status::Snapshot;

use crate::args::EnvCommand;
use crate::output::frontend_name;
use crate::running::{self, ask};

pub async fn run(cmd: EnvCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EnvCommand::List(c) => list(&c.path()?).await,
        EnvCommand::Use { name, config } => use_env(&config.path()?, &name).await,
        EnvCommand::Add {
            name,
            relay,
            ca_file,
            default,
            config,
        } => add(&config.path()?, &name, &relay, ca_file.as_deref(), default).await,
        EnvCommand::Remove { name, config } => remove(&config.path()?, &name).await,
    }
}

async fn list(path: &Path) -> anyhow::Result<ExitCode> {
    let config = AgentConfig::load(path)?;
    let running = running::snapshot().await;
    if config.environments.is_empty() {
        println!(
            "No environments in {}. Add one: gangway env add NAME https://RELAY",
            path.display()
        );
    }
    for e in &config.environments {
        let default = config.default_environment.as_deref() == Some(e.name.as_str());
        let mut line = format!(
            "{} {:<14} {}",
            if default { "*" } else { " " },
            e.name,
            namespace_for(&e.relay)
        );
        if let Some(s) = running
            .as_ref()
            .filter(|s| s.environment.as_deref() == Some(e.name.as_str()))
        {
            line += &format!(
                "   running in {}: {}",
                frontend_name(s.frontend),
                s.status_line
            );
        }
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn use_env(path: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let known = AgentConfig::load(path)?;
    if let Some(snap) = running::snapshot().await {
        if snap.environments.iter().any(|e| e.name == name) {
            eprintln!("Switching {} to {name}…", frontend_name(snap.frontend));
            let request = Request::Use {
                environment: name.to_string(),
            };
            let now: Snapshot = ask(&Client::default_path(), &request, |_, _| {}).await?;
            println!("Now using {name}: {}", now.status_line);
            return Ok(ExitCode::SUCCESS);
        }
    }
    known.environment(Some(name))?;
    gangway_agent::envs::set_default(path, name)?;
    println!("Default environment is now {name} (the tray app and `gangway up` start with it).");
    Ok(ExitCode::SUCCESS)
}

async fn add(
    path: &Path,
    name: &str,
    relay: &str,
    ca_file: Option<&Path>,
    default: bool,
) -> anyhow::Result<ExitCode> {
    let c = gangway_agent::envs::add(path, name, relay, ca_file, default)?;
    let env = c.environment(Some(name))?;
    println!(
        "Added {name} ({}) to {}.",
        namespace_for(&env.relay),
        path.display()
    );
    if c.default_environment.as_deref() == Some(name) {
        println!("It is the default environment.");
    }
    if running::snapshot().await.is_some() {
        running::reload().await;
        println!("Switch the running agent to it with: gangway env use {name}");
    } else {
        println!("Sign in with: gangway login --env {name}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(path: &Path, name: &str) -> anyhow::Result<ExitCode> {
    if let Some(snap) = running::snapshot().await {
        if snap.environment.as_deref() == Some(name) {
            bail!(
                "{name} is in use by {}; switch to another environment first (gangway env use OTHER)",
                frontend_name(snap.frontend)
            );
        }
    }
    // The user's own file: an environment the policy leaves out can still
    // be named, and the policy's refusal comes from `envs::remove`.
    let before = AgentConfig::load_user(path)?;
    let relay = before
        .environment(Some(name))
        .map(|e| namespace_for(&e.relay));
    gangway_agent::envs::remove(path, name)?;
    let relay = relay?;
    println!("Removed {name} from {}.", path.display());
    println!(
        "Its sign-in, if any, stays in the OS keychain; `gangway logout --relay {relay}` removes it."
    );
    if running::snapshot().await.is_some() {
        running::reload().await;
    }
    Ok(ExitCode::SUCCESS)
}
