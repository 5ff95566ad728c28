//! `gangway git credential|setup|remove`: git gets the agent's local
//! credential by itself, through git's credential-helper protocol.
//!
//! `setup` writes, for each local HTTP address of the running agent (both
//! `127.0.0.1` and `localhost`), two lines to `~/.gitconfig`:
//!
//! ```text
//! [credential "http://127.0.0.1:7990"]
//!     helper =
//!     helper = /usr/bin/gangway git credential
//! ```
//!
//! The empty `helper =` clears the helpers configured before it (GCM,
//! osxkeychain, store), so none of them ever sees or stores the secret;
//! only `gangway` answers for that address. No secret is written: the
//! helper asks the running agent each time. `remove` deletes exactly
//! these entries.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context};
use gangway_agent::control::{Client, GitCredential, Request};
use gangway_agent::relay_api::ServiceKind;
use gangway_agent::status::{Phase, Snapshot};

use crate::args::GitCommand;

/// Longest credential request read from git.
const MAX_INPUT: u64 = 64 * 1024;

/// What ends every helper line we write (how `remove` knows ours).
const HELPER_TAIL: &str = " git credential";

pub async fn run(cmd: GitCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GitCommand::Credential { action } => credential(&action).await,
        GitCommand::Setup => {
            let snap = crate::running::snapshot().await.context(
                "no Gangway agent is running: start the tray app or `gangway up`, then run `gangway git setup`",
            )?;
            let urls = setup(&snap)?;
            if urls.is_empty() {
                eprintln!("The running agent has no HTTP service listening: nothing to set up.");
            }
            for u in urls {
                eprintln!("git now asks Gangway for the local credential of {u}");
            }
            Ok(ExitCode::SUCCESS)
        }
        GitCommand::Remove => {
            let removed = remove()?;
            if removed.is_empty() {
                eprintln!("No Gangway credential helper was registered in ~/.gitconfig.");
            }
            for key in removed {
                eprintln!("removed {key} from ~/.gitconfig");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `gangway git credential get|store|erase`, as git runs it.
async fn credential(action: &str) -> anyhow::Result<ExitCode> {
    let mut input = String::new();
    std::io::stdin()
        .take(MAX_INPUT)
        .read_to_string(&mut input)
        .context("reading git's credential request")?;
    if action != "get" {
        // `store` and `erase`: nothing is kept, so nothing to do.
        return Ok(ExitCode::SUCCESS);
    }
    let (mut protocol, mut host) = (None, None);
    for line in input.lines() {
        if line.is_empty() {
            break;
        }
        match line.split_once('=') {
            Some(("protocol", v)) => protocol = Some(v.to_string()),
            Some(("host", v)) => host = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(protocol), Some(host)) = (protocol, host) else {
        return Ok(ExitCode::SUCCESS);
    };
    let request = Request::GitCredential { protocol, host };
    let answer = match Client::default_path().request(&request, |_, _| {}).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            eprintln!("gangway: no Gangway agent is running (start the tray app or `gangway up`)");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            eprintln!("gangway: cannot ask the running agent: {e}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    // `null`: not one of the agent's addresses; git goes on without us.
    if let Ok(Some(c)) = serde_json::from_value::<Option<GitCredential>>(answer) {
        let mut out = std::io::stdout().lock();
        write!(out, "username={}\npassword={}\n", c.username, c.password)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// After a sign-in: registers the helper for the running agent's local
/// HTTP addresses (waiting a few seconds for its listeners), so git needs
/// no step of its own.
pub async fn after_login() {
    let mut snap = None;
    for _ in 0..40 {
        snap = crate::running::snapshot().await;
        match &snap {
            // Just signed in: the agent fetches its catalog and binds its
            // listeners in a moment (Connected means it has).
            Some(s)
                if local_urls(s).is_empty()
                    && !matches!(
                        s.phase,
                        Phase::Connected | Phase::Failed { .. } | Phase::NoEnvironment
                    ) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await
            }
            _ => break,
        }
    }
    match snap.as_ref().map(setup) {
        Some(Ok(urls)) if !urls.is_empty() => eprintln!(
            "git: ~/.gitconfig names gangway as the credential helper for {} (undo: `gangway git remove`)",
            urls.join(", ")
        ),
        Some(Ok(_)) => {}
        Some(Err(e)) => eprintln!("note: git setup: {e:#}"),
        None => eprintln!("note: once the agent runs, `gangway git setup` lets git use it"),
    }
}

/// After a sign-out: removes the helper entries.
pub fn after_logout() {
    match remove() {
        Ok(keys) if !keys.is_empty() => {
            eprintln!("git: removed the gangway credential helper from ~/.gitconfig")
        }
        Ok(_) => {}
        Err(e) => eprintln!("note: git remove: {e:#}"),
    }
}

/// The local HTTP URLs of `snap`'s listeners, as git's config names them.
fn local_urls(snap: &Snapshot) -> Vec<String> {
    let mut urls = Vec::new();
    for s in &snap.services {
        if s.kind != ServiceKind::Http {
            continue;
        }
        let Some(port) = s
            .local_addr
            .as_deref()
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
        else {
            continue;
        };
        urls.push(format!("http://127.0.0.1:{port}"));
        urls.push(format!("http://localhost:{port}"));
    }
    urls
}

/// The helper line for this program: an absolute path (git runs it
/// through the shell with the action appended), or, when the path has
/// characters the shell would read, a `!` command with it quoted.
pub fn helper_value(exe: &Path) -> String {
    let p = exe.to_string_lossy();
    let plain = p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b));
    if plain {
        format!("{p}{HELPER_TAIL}")
    } else {
        format!("!'{}'{HELPER_TAIL}", p.replace('\'', r"'\''"))
    }
}

fn git_config(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("git")
        .arg("config")
        .arg("--global")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `git config` (is git installed?)")
}

fn checked(args: &[&str]) -> anyhow::Result<()> {
    let out = git_config(args)?;
    if !out.status.success() {
        bail!(
            "`git config --global {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Registers the helper for every local HTTP URL of the running agent;
/// returns the URLs.
pub fn setup(snap: &Snapshot) -> anyhow::Result<Vec<String>> {
    let exe = std::env::current_exe().context("finding the gangway program's path")?;
    let helper = helper_value(&exe);
    let urls = local_urls(snap);
    for url in &urls {
        let key = format!("credential.{url}.helper");
        // Exit 5: it was not set; fine.
        let _ = git_config(&["--unset-all", &key])?;
        checked(&["--add", &key, ""])?;
        checked(&["--add", &key, &helper])?;
    }
    Ok(urls)
}

/// Removes every `credential.<url>.helper` that names a gangway helper;
/// returns the keys removed.
pub fn remove() -> anyhow::Result<Vec<String>> {
    let out = git_config(&["--null", "--get-regexp", r"^credential\..*\.helper$"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut keys: Vec<String> = Vec::new();
    for record in text.split('\0') {
        let Some((key, value)) = record.split_once('\n') else {
            continue;
        };
        if value.ends_with(HELPER_TAIL)
            && value.contains("gangway")
            && !keys.iter().any(|k| k == key)
        {
            keys.push(key.to_string());
        }
    }
    for key in &keys {
        checked(&["--unset-all", key])?;
    }
    Ok(keys)
}

/// Removes the helper entries of exactly `urls` (what [`setup`] returned),
/// leaving any other gangway entry alone.
pub fn remove_urls(urls: &[String]) -> anyhow::Result<()> {
    for url in urls {
        let key = format!("credential.{url}.helper");
        // Exit 5: already gone; fine.
        let _ = git_config(&["--unset-all", &key])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_lines_follow_gits_rules() {
        assert_eq!(
            helper_value(Path::new("/usr/bin/gangway")),
            "/usr/bin/gangway git credential"
        );
        assert_eq!(
            helper_value(Path::new("/Users/a b/it's/gangway")),
            r"!'/Users/a b/it'\''s/gangway' git credential"
        );
    }
}
