//! Git's credential helper after a sign-in or sign-out from the tray, as
//! `gangway login` / `gangway logout` do it in a terminal: the tray runs
//! the `gangway` CLI installed beside it (`gangway git setup|remove`),
//! which writes or removes only Gangway's helper lines in `~/.gitconfig`
//! (no secret; see the CLI's `commands/git.rs`). So a developer who signs
//! in from the tray clones and pushes with no further step.

use std::path::PathBuf;
use std::time::Duration;

use gangway_agent::agent::Agent;
use gangway_agent::status::Phase;

/// How long to wait for the listeners after a sign-in.
const LISTENERS_WAIT: Duration = Duration::from_secs(30);

fn cli() -> Option<PathBuf> {
    let name = if cfg!(windows) {
        "gangway.exe"
    } else {
        "gangway"
    };
    let exe = std::env::current_exe().ok()?.with_file_name(name);
    exe.is_file().then_some(exe)
}

async fn run(action: &'static str) {
    let Some(exe) = cli() else {
        tracing::warn!(
            "no `gangway` beside the app: run `gangway git {action}` to let git use the local door"
        );
        return;
    };
    let out = tokio::process::Command::new(&exe)
        .args(["git", action])
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => {
            tracing::info!(
                "git {action}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )
        }
        Ok(o) => tracing::warn!(
            "`gangway git {action}` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!("cannot run {}: {e}", exe.display()),
    }
}

/// After a sign-in: once the environment is connected (its listeners
/// bound), registers git's helper for them.
pub async fn after_sign_in(agent: &Agent) {
    let mut changes = agent.changes();
    let connected = tokio::time::timeout(LISTENERS_WAIT, async {
        loop {
            if agent.snapshot().phase == Phase::Connected {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if connected.is_ok() {
        run("setup").await;
    }
}

/// After a sign-out: removes the helper lines.
pub async fn after_sign_out() {
    run("remove").await;
}
