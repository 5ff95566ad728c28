//! The tray icon: its picture follows the agent's phase, its tooltip is the
//! status line, and its menu is [`crate::menu::build`] made native.

use std::sync::Mutex;

use gangway_agent::status::TrayIcon as Icon;
use tauri::image::Image;
use tauri::menu::{CheckMenuItem, IsMenuItem, Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Manager, Runtime};

use crate::menu::{Action, Entry};
use crate::shell::Shell;

pub const TRAY_ID: &str = "gangway";

/// The last menu and icon put on the tray, to skip identical rebuilds
/// (rebuilding closes a menu the user has open).
#[derive(Default)]
pub struct Shown(Mutex<Option<(Vec<Entry>, Icon, String)>>);

fn picture(icon: Icon) -> Image<'static> {
    let bytes: &'static [u8] = match icon {
        Icon::SignedOut => include_bytes!("../icons/tray-signed-out.png"),
        Icon::Connecting => include_bytes!("../icons/tray-connecting.png"),
        Icon::Connected => include_bytes!("../icons/tray-connected.png"),
        Icon::Error => include_bytes!("../icons/tray-error.png"),
    };
    Image::from_bytes(bytes).expect("embedded tray icons are PNGs")
}

/// Builds the native menu for `entries`.
pub fn native<R: Runtime, M: Manager<R>>(m: &M, entries: &[Entry]) -> tauri::Result<Menu<R>> {
    let menu = Menu::new(m)?;
    for e in entries {
        append(m, e, &|i| menu.append(i))?;
    }
    Ok(menu)
}

fn append<R: Runtime, M: Manager<R>>(
    m: &M,
    e: &Entry,
    add: &dyn Fn(&dyn IsMenuItem<R>) -> tauri::Result<()>,
) -> tauri::Result<()> {
    match e {
        Entry::Item { id, text, enabled } => {
            add(&MenuItem::with_id(m, id, text, *enabled, None::<&str>)?)
        }
        Entry::Check {
            id,
            text,
            enabled,
            checked,
        } => add(&CheckMenuItem::with_id(
            m,
            id,
            text,
            *enabled,
            *checked,
            None::<&str>,
        )?),
        Entry::Submenu {
            id,
            text,
            enabled,
            items,
        } => {
            let sub = Submenu::with_id(m, id, text, *enabled)?;
            for i in items {
                append(m, i, &|x| sub.append(x))?;
            }
            add(&sub)
        }
        Entry::Separator => add(&PredefinedMenuItem::separator(m)?),
    }
}

/// Creates the tray icon with the current state.
pub fn create<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<TrayIcon<R>> {
    let shell = app.state::<Shell>();
    let snap = shell.snapshot();
    let entries = shell.menu();
    let icon = tray_icon(&snap);
    let tray = TrayIconBuilder::with_id(TRAY_ID)
        .icon(picture(icon))
        .tooltip(&snap.status_line)
        .menu(&native(app, &entries)?)
        .show_menu_on_left_click(true)
        .on_menu_event(|app, event| {
            let id = event.id().as_ref().to_string();
            if let Some(action) = Action::from_id(&id) {
                let shell = app.state::<Shell>();
                if let Err(e) = shell.perform(app, action) {
                    tracing::warn!("{}", e.message);
                }
            }
        })
        .build(app)?;
    *app.state::<Shown>().0.lock().expect("tray lock") = Some((entries, icon, snap.status_line));
    Ok(tray)
}

fn tray_icon(s: &gangway_agent::status::Snapshot) -> Icon {
    if s.signing_in.is_some() {
        Icon::Connecting
    } else {
        s.phase.icon()
    }
}

/// Brings the tray up to date with the agent (menu, icon, tooltip).
pub fn refresh<R: Runtime>(app: &AppHandle<R>) {
    let Some(tray) = app.tray_by_id(TRAY_ID) else {
        return;
    };
    let shell = app.state::<Shell>();
    let snap = shell.snapshot();
    let entries = shell.menu();
    let icon = tray_icon(&snap);
    let shown = app.state::<Shown>();
    let mut last = shown.0.lock().expect("tray lock");
    let (menu_changed, icon_changed, tip_changed) = match &*last {
        Some((m, i, t)) => (*m != entries, *i != icon, *t != snap.status_line),
        None => (true, true, true),
    };
    if menu_changed {
        match native(app, &entries) {
            Ok(menu) => {
                if let Err(e) = tray.set_menu(Some(menu)) {
                    tracing::warn!("tray menu: {e}");
                }
            }
            Err(e) => tracing::warn!("tray menu: {e}"),
        }
    }
    if icon_changed {
        let _ = tray.set_icon(Some(picture(icon)));
    }
    if tip_changed {
        let _ = tray.set_tooltip(Some(&snap.status_line));
    }
    *last = Some((entries, icon, snap.status_line));
}
