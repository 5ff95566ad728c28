//! The app's state and what its buttons and menu items do. Every action is
//! one call into the agent library; nothing here knows about tunnels.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use gangway_agent::agent::Agent;
use gangway_agent::control::{handle_agent_request, open_proxy, Opening};
use gangway_agent::control::{ErrorCode, Failure, Handled, Handler, Progress, Request};
use gangway_agent::status::Snapshot;
use serde::Serialize;
use tauri::{AppHandle, Manager, Runtime};

use crate::autostart::Autostart;
use crate::menu::{self, Action};

/// How long a sign-in started from the tray waits for the browser.
pub const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);

/// What the window and the tray share (Tauri managed state).
pub struct Shell {
    pub agent: Agent,
    pub autostart: Autostart,
    clipboard: Mutex<Option<arboard::Clipboard>>,
    quitting: AtomicBool,
}

/// An error as the status window shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UiError {
    pub code: &'static str,
    pub message: String,
}

impl UiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        UiError {
            code,
            message: message.into(),
        }
    }
}

impl Shell {
    pub fn new(agent: Agent, autostart: Autostart) -> Self {
        Shell {
            agent,
            autostart,
            clipboard: Mutex::new(None),
            quitting: AtomicBool::new(false),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.agent.snapshot()
    }

    /// The tray menu as it should be now.
    pub fn menu(&self) -> Vec<menu::Entry> {
        menu::build(&self.snapshot(), self.autostart.is_enabled())
    }

    pub fn quitting(&self) -> bool {
        self.quitting.load(Ordering::SeqCst)
    }

    /// Puts `text` on the system clipboard (kept owned while the app runs,
    /// so X11 pastes keep working).
    pub fn copy(&self, text: &str) -> Result<(), UiError> {
        let mut slot = self.clipboard.lock().expect("clipboard lock");
        if slot.is_none() {
            *slot = Some(
                arboard::Clipboard::new()
                    .map_err(|e| UiError::new("clipboard", format!("no clipboard: {e}")))?,
            );
        }
        slot.as_mut()
            .expect("set above")
            .set_text(text.to_string())
            .map_err(|e| UiError::new("clipboard", format!("cannot copy: {e}")))
    }

    /// The diagnostics report as text: `gangway doctor`'s checks run by
    /// this agent, then the same redacted sections `gangway bugreport`
    /// archives (with this agent's door secrets taken out by value too).
    pub async fn diagnostics(&self) -> String {
        use gangway_agent::doctor::bugreport::{Bugreport, Extra};
        use gangway_agent::doctor::{self, AgentLookup, Inputs, Probe};
        let snap = self.snapshot();
        let config_path = self
            .agent
            .config_path()
            .map(std::path::Path::to_path_buf)
            .or_else(gangway_agent::config::user_config_path)
            .unwrap_or_default();
        let mut inputs = Inputs::system(config_path, snap.environment.clone());
        inputs.agent = AgentLookup::Given(Some(Box::new(snap.clone())));
        let probe = Probe::new(inputs);
        let report = doctor::run(&probe).await;
        let secrets = self.agent.door().secrets();
        let extra = Extra {
            log_dir: None,
            secrets: vec![secrets.git_secret(), secrets.browser_secret().to_string()],
            agent_status: Some(snap.diagnostics()),
        };
        Bugreport::collect(&probe, &report, extra).await.text()
    }

    /// Opens the local Confluence address in the browser, through the
    /// local door's one-time URL (it sets the door cookie; no password
    /// dialog). Returns the plain address (never the one-time token).
    pub fn open_confluence(&self) -> Result<String, UiError> {
        let url = self
            .snapshot()
            .links
            .confluence
            .ok_or_else(|| UiError::new("unavailable", "Confluence is not available now"))?;
        let port = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.port())
            .ok_or_else(|| UiError::new("unavailable", "Confluence has no local port"))?;
        let token = self.agent.door().secrets().one_time_token(port);
        let once = gangway_agent::door::http::open_url(port, &token);
        gangway_agent::signin::open_browser(&once, self.agent.browser())
            .map_err(|e| UiError::new("browser", e))?;
        Ok(url)
    }

    /// Does what the menu item `action` does. Long work (sign-in, switch)
    /// runs in the background; the tray updates from the agent's state.
    pub fn perform<R: Runtime>(&self, app: &AppHandle<R>, action: Action) -> Result<(), UiError> {
        tracing::debug!(?action, "menu action");
        match action {
            Action::SignIn => {
                let agent = self.agent.clone();
                tauri::async_runtime::spawn(async move {
                    match agent.sign_in(SIGN_IN_TIMEOUT, |_| {}).await {
                        Ok(_) => crate::git_setup::after_sign_in(&agent).await,
                        Err(e) => tracing::warn!("sign-in: {e}"),
                    }
                });
                Ok(())
            }
            Action::SignOut => {
                let agent = self.agent.clone();
                tauri::async_runtime::spawn(async move {
                    match agent.sign_out().await {
                        Ok(_) => crate::git_setup::after_sign_out().await,
                        Err(e) => tracing::warn!("sign-out: {e}"),
                    }
                });
                Ok(())
            }
            Action::UseEnvironment(name) => {
                let agent = self.agent.clone();
                tauri::async_runtime::spawn(async move {
                    if let Err(e) = agent.use_environment(&name).await {
                        tracing::warn!("switching to {name}: {e}");
                    }
                });
                Ok(())
            }
            Action::OpenConfluence => self.open_confluence().map(|_| ()),
            Action::CopyCloneHttp | Action::CopyCloneSsh => {
                let links = self.snapshot().links;
                let url = if action == Action::CopyCloneHttp {
                    links.clone_http
                } else {
                    links.clone_ssh
                };
                let url = url
                    .ok_or_else(|| UiError::new("unavailable", "Bitbucket is not available now"))?;
                self.copy(&url)
            }
            Action::OpenWindow => {
                crate::window::show(app).map_err(|e| UiError::new("window", e.to_string()))
            }
            Action::CopyDiagnostics => {
                let app = app.clone();
                tauri::async_runtime::spawn(async move {
                    let shell = app.state::<Shell>();
                    let text = shell.diagnostics().await;
                    match shell.copy(&text) {
                        Ok(()) => tracing::info!("diagnostics copied to the clipboard"),
                        Err(e) => tracing::warn!("copying diagnostics: {}", e.message),
                    }
                });
                Ok(())
            }
            Action::ToggleAutostart => {
                if self.agent.snapshot().start_at_login_locked {
                    return Err(UiError::new(
                        "autostart",
                        "Start at login is set by your organisation (policy key start_at_login)",
                    ));
                }
                let on = !self.autostart.is_enabled();
                self.autostart
                    .set(on)
                    .map_err(|e| UiError::new("autostart", e.to_string()))?;
                crate::tray::refresh(app);
                Ok(())
            }
            Action::Quit => {
                self.quitting.store(true, Ordering::SeqCst);
                let agent = self.agent.clone();
                let app = app.clone();
                tauri::async_runtime::spawn(async move {
                    agent.shutdown().await;
                    app.exit(0);
                });
                Ok(())
            }
        }
    }
}

/// The control API of the tray app: the agent's requests, plus the window
/// and the menu.
pub struct AppControl<R: Runtime> {
    pub app: AppHandle<R>,
}

impl<R: Runtime> Handler for AppControl<R> {
    fn handle(&self, request: Request, progress: Progress) -> Handled {
        let app = self.app.clone();
        Box::pin(async move {
            let shell = app.state::<Shell>();
            let json = |v: serde_json::Result<serde_json::Value>| {
                v.map_err(|e| Failure::new(ErrorCode::Failed, e.to_string()))
            };
            match request {
                Request::Show => {
                    crate::window::show(&app)
                        .map_err(|e| Failure::new(ErrorCode::Failed, e.to_string()))?;
                    Ok(serde_json::Value::Null)
                }
                Request::Menu => json(serde_json::to_value(shell.menu())),
                Request::Activate { id } => {
                    let entries = shell.menu();
                    match (menu::find(&entries, &id), Action::from_id(&id)) {
                        (
                            Some(
                                menu::Entry::Item { enabled: true, .. }
                                | menu::Entry::Check { enabled: true, .. },
                            ),
                            Some(action),
                        ) => shell
                            .perform(&app, action)
                            .map(|()| serde_json::Value::Null)
                            .map_err(|e| Failure::new(ErrorCode::Failed, e.message)),
                        (Some(_), _) => Err(Failure::new(
                            ErrorCode::Unsupported,
                            format!("menu item {id:?} is disabled or does nothing"),
                        )),
                        (None, _) => Err(Failure::new(
                            ErrorCode::NotFound,
                            format!("no menu item {id:?}"),
                        )),
                    }
                }
                other => {
                    let agent = shell.agent.clone();
                    handle_agent_request(&agent, other, progress).await
                }
            }
        })
    }

    fn proxy(&self, service: String) -> Opening {
        let agent = self.app.state::<Shell>().agent.clone();
        Box::pin(async move { open_proxy(&agent, &service).await })
    }
}
