//! The status window: created on first use, hidden (not destroyed) when
//! closed, so the tray and the tunnels keep running.

use tauri::{AppHandle, Manager, Runtime, WebviewUrl, WebviewWindowBuilder};

/// Label of the status window (the capability in `tauri.conf.json` names it).
pub const LABEL: &str = "status";

/// Shows the status window, creating it if needed, and focuses it.
pub fn show<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<()> {
    if let Some(w) = app.get_webview_window(LABEL) {
        w.show()?;
        w.unminimize()?;
        w.set_focus()?;
        return Ok(());
    }
    let w = WebviewWindowBuilder::new(app, LABEL, WebviewUrl::App("index.html".into()))
        .title("Gangway")
        .inner_size(680.0, 760.0)
        .min_inner_size(520.0, 480.0)
        .center()
        .visible(true)
        .build()?;
    w.set_focus()?;
    Ok(())
}
