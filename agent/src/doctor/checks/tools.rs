//! git and ssh, as the agent relies on them: git's credential helper
//! (written by `gangway git setup`) for the local HTTP addresses, and
//! `ssh` for the SSH service.

use std::process::Stdio;
use std::time::Duration;

use crate::doctor::{Outcome, Probe};
use crate::relay_api::ServiceKind;

/// What the helper lines `gangway git setup` writes end with.
const HELPER_TAIL: &str = " git credential";

/// The first line `program args` prints (stdout, else stderr: `ssh -V`
/// writes there), if it runs.
pub async fn version(program: &str, args: &[&str]) -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

/// `git config --global --get-all KEY`'s values, in order.
async fn git_values(key: &str) -> Result<Vec<String>, String> {
    let out = tokio::process::Command::new("git")
        .args(["config", "--global", "--get-all", key])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    // Exit 1: not set.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// git is installed and asks Gangway for the credential of each local
/// HTTP address the running agent serves.
pub async fn git(p: &Probe) -> Outcome {
    let Some(v) = p.versions().await.git else {
        return Outcome::fail(
            "git is not installed (or not on PATH)",
            "install git (https://git-scm.com/downloads)",
        );
    };
    let Some(agent) = p.agent_here().await else {
        return Outcome::warn(
            format!("{v}; the helper is not checked: no agent serves this environment"),
            "start the Gangway app or `gangway up`, then run `gangway doctor` again",
        );
    };
    let ports: Vec<u16> = agent
        .services
        .iter()
        .filter(|s| s.kind == ServiceKind::Http)
        .filter_map(|s| s.local_addr.as_deref())
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .collect();
    if ports.is_empty() {
        return Outcome::pass(format!("{v}; no HTTP service listens, no helper needed"));
    }
    for port in &ports {
        for host in ["127.0.0.1", "localhost"] {
            let url = format!("http://{host}:{port}");
            let values = match git_values(&format!("credential.{url}.helper")).await {
                Ok(v) => v,
                Err(e) => return Outcome::fail(e, "check your git installation"),
            };
            let last = values.last().map(String::as_str).unwrap_or("");
            if !(last.ends_with(HELPER_TAIL) && last.contains("gangway")) {
                return Outcome::warn(
                    format!("git does not ask Gangway for the password of {url}"),
                    "run `gangway git setup`",
                );
            }
            if let Some(want) = &p.inputs.git_helper {
                if last != want {
                    return Outcome::warn(
                        format!("git's helper for {url} is {last:?}, not this program ({want:?})"),
                        "run `gangway git setup` with the gangway you use now",
                    );
                }
            }
        }
    }
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    Outcome::pass(format!(
        "{v}; ~/.gitconfig names gangway as the credential helper for port(s) {}",
        list.join(", ")
    ))
}

/// `ssh` is there when the environment has an SSH service.
pub async fn ssh(p: &Probe) -> Outcome {
    let needed: Vec<String> = match p.catalog().await {
        Ok(c) => c
            .services
            .iter()
            .filter(|s| s.kind == ServiceKind::Tcp && s.name.to_ascii_lowercase().contains("ssh"))
            .map(|s| s.name.clone())
            .collect(),
        Err(_) => Vec::new(),
    };
    match (p.versions().await.ssh, needed.is_empty()) {
        (Some(v), true) => Outcome::pass(v),
        (Some(v), false) => Outcome::pass(format!("{v}, for {}", needed.join(", "))),
        (None, true) => Outcome::pass("ssh is not installed; no SSH service needs it"),
        (None, false) => Outcome::warn(
            format!(
                "ssh is not installed, but {} is an SSH service",
                needed.join(", ")
            ),
            "install an OpenSSH client, or clone over HTTP",
        ),
    }
}
