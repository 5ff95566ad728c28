//! Commands the status window calls (`invoke('status')` …). Each is a thin
//! call into [`Shell`] and the agent; errors reach the page as
//! `{code, message}`.

use gangway_agent::status::Snapshot;
use tauri::{AppHandle, Runtime, State};

use crate::menu::Action;
use crate::shell::{Shell, UiError};

/// The agent's state (the window renders it; it also listens for the
/// `status` event).
#[tauri::command]
pub fn status(shell: State<'_, Shell>) -> Snapshot {
    shell.snapshot()
}

/// Starts a browser sign-in to the current environment.
#[tauri::command]
pub fn sign_in<R: Runtime>(app: AppHandle<R>, shell: State<'_, Shell>) -> Result<(), UiError> {
    guard_environment(&shell)?;
    shell.perform(&app, Action::SignIn)
}

/// Signs out of the current environment.
#[tauri::command]
pub fn sign_out<R: Runtime>(app: AppHandle<R>, shell: State<'_, Shell>) -> Result<(), UiError> {
    guard_environment(&shell)?;
    shell.perform(&app, Action::SignOut)
}

/// Switches to environment `name`; returns once the old one has stopped
/// and the new one is starting.
#[tauri::command]
pub async fn use_environment(shell: State<'_, Shell>, name: String) -> Result<Snapshot, UiError> {
    shell
        .agent
        .use_environment(&name)
        .await
        .map_err(|e| UiError::new("environment", e.to_string()))?;
    Ok(shell.snapshot())
}

/// Copies the diagnostics report (the doctor's checks and the redacted
/// bugreport sections, as text) to the clipboard and returns it.
#[tauri::command]
pub async fn copy_diagnostics(shell: State<'_, Shell>) -> Result<String, UiError> {
    let text = shell.diagnostics().await;
    shell.copy(&text)?;
    Ok(text)
}

/// Copies `text` (a clone URL, a local address) to the clipboard.
#[tauri::command]
pub fn copy_text(shell: State<'_, Shell>, text: String) -> Result<(), UiError> {
    if text.len() > 4096 {
        return Err(UiError::new("too_long", "that is too long to copy"));
    }
    shell.copy(&text)
}

/// Opens Confluence (the local address) in the browser.
#[tauri::command]
pub fn open_confluence(shell: State<'_, Shell>) -> Result<String, UiError> {
    shell.open_confluence()
}

fn guard_environment(shell: &Shell) -> Result<(), UiError> {
    if shell.snapshot().environment.is_none() {
        return Err(UiError::new(
            "no_environment",
            "No environment is configured. Add one with `gangway env add NAME https://RELAY`.",
        ));
    }
    Ok(())
}
