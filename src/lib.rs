//! Gangway's tray app: a thin Tauri v2 shell over `gangway-agent`.
//!
//! ```text
//! run() ── one instance per user (control socket taken? → ask it to show its window)
//!   ├─ Agent (agent library): environments, sign-in, listeners, tunnel, snapshot
//!   ├─ control API (agent library) served with AppControl: status, use, login, show, menu…
//!   └─ Tauri: tray (tray.rs, menu.rs) · status window (window.rs, ui/) · commands.rs
//!             notifications (notify.rs) · start at login (autostart.rs)
//! ```
//!
//! The window and the tray only read the agent's [`Snapshot`] and call its
//! methods; closing the window hides it, and the app runs until Quit.
#![forbid(unsafe_code)]

pub mod autostart;
pub mod commands;
pub mod git_setup;
pub mod menu;
pub mod notify;
pub mod shell;
pub mod tray;
pub mod window;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use gangway_agent::agent::{Agent, AgentOptions, EnvSpec, Tokens};
use gangway_agent::config::{user_config_path, AgentConfig};
use gangway_agent::control::{
    self, Bound, Client, ControlError, ControlServer, ErrorCode, Request,
};
use gangway_agent::keychain::OsKeychain;
use gangway_agent::status::{Frontend, Phase, Snapshot};
use gangway_agent::tunnel::Backoff;
use tauri::{Emitter, Manager, Runtime, WindowEvent};
use tokio_util::sync::CancellationToken;

use crate::shell::{AppControl, Shell};

/// Event carrying a fresh [`Snapshot`] to the status window.
pub const STATUS_EVENT: &str = "status";

/// Logs to standard error and to the agent's size-bounded log file
/// (`gangway_agent::logfile`, read by `gangway bugreport`); a log file
/// that cannot be opened is said once and skipped.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tao=warn,wry=warn".into());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let (file, problem) = match gangway_agent::logfile::open_default() {
        Ok(f) => (f, None),
        Err(p) => (None, Some(p)),
    };
    let file = file.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .init();
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
}

/// The app's entry point (`main` only calls this).
pub fn run() {
    init_logging();
    let autostarted = std::env::args().any(|a| a == autostart::FLAG);
    // One worker thread runs the agent, as in the `gangway` CLI: one
    // person's traffic, no wake-ups between worker threads (BENCHMARKS.md,
    // "the gangway CLI runs on a current-thread runtime"). The scheduler
    // stays multi-threaded so the UI thread can hand it work and block on
    // it; blocking work still goes to tokio's blocking threads.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gangway-desktop: cannot start: {e}");
            std::process::exit(1);
        }
    };
    tauri::async_runtime::set(rt.handle().clone());
    let _guard = rt.enter();

    // One instance per user: the control socket's owner is the instance.
    let path = control::socket_path();
    let server = match rt.block_on(ControlServer::bind(&path)) {
        Ok(Bound::Serving(s)) => s,
        Ok(Bound::Taken(_)) => std::process::exit(hand_over(&rt, &path)),
        Err(e) => {
            eprintln!("gangway-desktop: {e}");
            std::process::exit(1);
        }
    };

    let (config_path, config) = load_config();
    let first_start = first_start(config_path.as_deref());
    let agent = Agent::start(options(config_path, &config));
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let login_item = autostart::Autostart::for_this_user();
    apply_start_at_login(&config, &login_item, first_start);
    let open_window = !first_start || config.settings.open_status_window_at_first_start;
    let shell = Shell::new(agent.clone(), login_item);
    let app = match build(tauri::Builder::default(), shell)
        .setup(move |app| {
            let handle = app.handle().clone();
            server.serve(
                Arc::new(AppControl {
                    app: handle.clone(),
                }),
                stop.clone(),
            );
            tray::create(&handle)?;
            follow_agent(&handle);
            if !autostarted && open_window {
                // First thing a new user needs is the sign-in: show the window.
                let h = handle.clone();
                tauri::async_runtime::spawn(async move {
                    let s = h.state::<Shell>().agent.settled().await;
                    if matches!(
                        s.phase,
                        Phase::SignInNeeded { .. } | Phase::SignedOut | Phase::NoEnvironment
                    ) {
                        let _ = window::show(&h);
                    }
                });
            }
            Ok(())
        })
        .build(tauri::generate_context!())
    {
        Ok(app) => app,
        Err(e) => {
            eprintln!("gangway-desktop: cannot start the desktop app: {e}");
            std::process::exit(1);
        }
    };
    // `run` does not return: the process ends when the event loop does.
    app.run(move |app, event| match event {
        // Closing the last window is not quitting; the tray stays.
        tauri::RunEvent::ExitRequested { api, code, .. }
            if code.is_none() && !app.state::<Shell>().quitting() =>
        {
            api.prevent_exit();
        }
        tauri::RunEvent::Exit => {
            tauri::async_runtime::block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), agent.shutdown()).await;
            });
            stopped.cancel();
            let _ = std::fs::remove_file(&path);
        }
        _ => {}
    });
}

/// Registers the state, commands and window behaviour on `builder` (the
/// real runtime, or the mock one in tests).
pub fn build<R: Runtime>(builder: tauri::Builder<R>, shell: Shell) -> tauri::Builder<R> {
    builder
        .manage(shell)
        .manage(tray::Shown::default())
        .invoke_handler(tauri::generate_handler![
            commands::status,
            commands::sign_in,
            commands::sign_out,
            commands::use_environment,
            commands::copy_diagnostics,
            commands::copy_text,
            commands::open_confluence,
        ])
        .on_window_event(|window, event| {
            if let WindowEvent::CloseRequested { api, .. } = event {
                if window.label() == window::LABEL && !window.state::<Shell>().quitting() {
                    api.prevent_close();
                    let _ = window.hide();
                }
            }
        })
}

/// Another instance owns the socket: ask it to show its window. Returns
/// the exit code for this process.
fn hand_over(rt: &tokio::runtime::Runtime, path: &std::path::Path) -> i32 {
    match rt.block_on(Client::new(path).request(&Request::Show, |_, _| {})) {
        Ok(_) => {
            eprintln!("Gangway is already running; its status window is shown.");
            0
        }
        Err(ControlError::Remote(f)) if f.code == ErrorCode::Unsupported => {
            eprintln!(
                "gangway-desktop: `gangway up` is already running for this user; \
                 stop it first (the tray app runs the same agent)"
            );
            1
        }
        Err(e) => {
            eprintln!(
                "gangway-desktop: another instance holds {}: {e}",
                path.display()
            );
            1
        }
    }
}

/// The user config under the organisation's policy; a broken file is
/// logged and the app starts without it.
fn load_config() -> (Option<std::path::PathBuf>, AgentConfig) {
    let config_path = user_config_path();
    let config = match config_path.as_deref().map(AgentConfig::load) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::error!("{e}");
            AgentConfig::default()
        }
        None => AgentConfig::default(),
    };
    for p in &config.problems {
        tracing::warn!("{p}");
    }
    (config_path, config)
}

/// Whether this is the app's first start for this user (a marker beside
/// the user config, written now).
fn first_start(config_path: Option<&std::path::Path>) -> bool {
    let Some(dir) = config_path.and_then(|p| p.parent()) else {
        return false;
    };
    let marker = dir.join(".tray-started");
    if marker.exists() {
        return false;
    }
    let _ = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&marker, b""));
    true
}

/// "Start at login" as the policy says: a mandatory value always, a
/// recommended one (or the user file's) at the first start only.
fn apply_start_at_login(config: &AgentConfig, item: &autostart::Autostart, first_start: bool) {
    use gangway_agent::config::Source;
    let Some(setting) = config
        .settings
        .table
        .iter()
        .find(|s| s.key == "start_at_login")
    else {
        return;
    };
    let apply = match setting.source {
        Source::Policy => true,
        Source::Recommended | Source::UserFile => first_start,
        Source::Default => false,
    };
    if apply && item.is_enabled() != config.settings.start_at_login {
        if let Err(e) = item.set(config.settings.start_at_login) {
            tracing::warn!("cannot set start at login: {e}");
        }
    }
}

/// The agent as the tray runs it: environments from the user config, the
/// default one first, tokens in the OS keychain.
fn options(config_path: Option<std::path::PathBuf>, config: &AgentConfig) -> AgentOptions {
    let environments: Vec<EnvSpec> = config
        .environments
        .iter()
        .map(|e| EnvSpec::from_config(e, None))
        .collect();
    AgentOptions {
        config_path,
        ca_override: None,
        initial: config.default_environment.clone(),
        environments,
        tokens: Tokens::Keychain(Arc::new(OsKeychain)),
        listen: BTreeMap::new(),
        allow_network_listen: false,
        connect_wait: gangway_agent::listener::DEFAULT_CONNECT_WAIT,
        backoff: Backoff::default(),
        browser: std::env::var("BROWSER").ok(),
        unreachable_notice_after: gangway_agent::notices::UNREACHABLE_NOTICE_AFTER,
        frontend: Frontend::Tray,
        managed: gangway_agent::agent::Managed::from_config(config),
    }
}

/// Keeps the tray and the window in step with the agent, and turns its
/// notices into desktop notifications.
fn follow_agent<R: Runtime>(app: &tauri::AppHandle<R>) {
    let agent = app.state::<Shell>().agent.clone();
    let mut changes = agent.changes();
    let h = app.clone();
    tauri::async_runtime::spawn(async move {
        loop {
            tray::refresh(&h);
            let snap: Snapshot = h.state::<Shell>().snapshot();
            let _ = h.emit(STATUS_EVENT, &snap);
            if changes.changed().await.is_err() {
                break;
            }
            // Coalesce bursts of changes.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut notices = agent.notices();
    tauri::async_runtime::spawn(async move {
        loop {
            match notices.recv().await {
                Ok(n) => {
                    let _ = tokio::task::spawn_blocking(move || notify::show(&n)).await;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use gangway_agent::agent::EnvSource;
    use gangway_agent::keychain::MemoryStore;
    use tauri::ipc::{CallbackFn, InvokeBody};
    use tauri::test::{get_ipc_response, mock_builder, mock_context, noop_assets, INVOKE_KEY};
    use tauri::webview::InvokeRequest;

    fn agent(envs: Vec<EnvSpec>) -> Agent {
        Agent::start(AgentOptions {
            config_path: None,
            ca_override: None,
            initial: envs.first().map(|e| e.name.clone()),
            environments: envs,
            tokens: Tokens::Keychain(Arc::new(MemoryStore::new())),
            listen: BTreeMap::new(),
            allow_network_listen: false,
            connect_wait: Duration::from_secs(1),
            backoff: Backoff::default(),
            browser: Some("true".into()),
            unreachable_notice_after: Duration::from_secs(60),
            frontend: Frontend::Tray,
            managed: Default::default(),
        })
    }

    fn invoke(
        w: &tauri::WebviewWindow<tauri::test::MockRuntime>,
        cmd: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, serde_json::Value> {
        get_ipc_response(
            w,
            InvokeRequest {
                cmd: cmd.into(),
                callback: CallbackFn(0),
                error: CallbackFn(1),
                // The app's own origin on Linux and macOS.
                url: "tauri://localhost".parse().unwrap(),
                body: InvokeBody::Json(body),
                headers: Default::default(),
                invoke_key: INVOKE_KEY.to_string(),
            },
        )
        .map(|b| b.deserialize::<serde_json::Value>().unwrap())
    }

    #[test]
    fn window_commands_over_ipc() {
        let dir = tempfile::tempdir().unwrap();
        let (agent, envs) = tauri::async_runtime::block_on(async {
            // An unreachable relay: the agent keeps retrying, as it would offline.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            drop(l);
            let envs = vec![
                EnvSpec {
                    name: "Production".into(),
                    relay: format!("http://127.0.0.1:{port}").parse().unwrap(),
                    ca_file: None,
                    proxy: None,
                    ports: BTreeMap::new(),
                    login_hint: "gangway login --env Production".into(),
                    source: EnvSource::ConfigFile,
                    locked: false,
                },
                EnvSpec {
                    name: "Staging".into(),
                    relay: format!("http://localhost:{port}").parse().unwrap(),
                    ca_file: None,
                    proxy: None,
                    ports: BTreeMap::new(),
                    login_hint: "gangway login --env Staging".into(),
                    source: EnvSource::ConfigFile,
                    locked: false,
                },
            ];
            (agent(envs.clone()), envs)
        });
        let shell = Shell::new(
            agent.clone(),
            autostart::Autostart::at(&dir.path().join("a.desktop"), std::path::Path::new("/x")),
        );
        let app = build(mock_builder(), shell)
            .build(mock_context(noop_assets()))
            .unwrap();
        let w = tauri::WebviewWindowBuilder::new(&app, window::LABEL, Default::default())
            .build()
            .unwrap();

        let s = invoke(&w, "status", serde_json::json!({})).unwrap();
        assert_eq!(s["environment"], "Production");
        assert_eq!(s["environments"].as_array().unwrap().len(), envs.len());
        assert!(
            s["status_line"]
                .as_str()
                .unwrap()
                .starts_with("Production — "),
            "{s}"
        );

        let s = invoke(
            &w,
            "use_environment",
            serde_json::json!({ "name": "Staging" }),
        )
        .unwrap();
        assert_eq!(s["environment"], "Staging");
        assert_eq!(s["environments"][1]["current"], true);
        let e = invoke(&w, "use_environment", serde_json::json!({ "name": "Nope" })).unwrap_err();
        assert_eq!(e["code"], "environment");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("no environment named"),
            "{e}"
        );

        // Nothing to open or copy while the relay is unreachable.
        let e = invoke(&w, "open_confluence", serde_json::json!({})).unwrap_err();
        assert_eq!(e["code"], "unavailable");
        let e = invoke(
            &w,
            "copy_text",
            serde_json::json!({ "text": "x".repeat(5000) }),
        )
        .unwrap_err();
        assert_eq!(e["code"], "too_long");

        // Closing the status window hides it; the app goes on.
        w.close().unwrap();
        assert!(app.get_webview_window(window::LABEL).is_some());
        tauri::async_runtime::block_on(agent.shutdown());
    }
}
