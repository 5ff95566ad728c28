//! The tray menu as data: built from the agent's [`Snapshot`] (pure, so it
//! is tested without GTK), turned into a native menu by `tray.rs`, and
//! served as JSON by the control API (`Request::Menu`).

use gangway_agent::status::{Phase, Snapshot};
use serde::{Deserialize, Serialize};

/// One menu entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    Item {
        id: String,
        text: String,
        enabled: bool,
    },
    Check {
        id: String,
        text: String,
        enabled: bool,
        checked: bool,
    },
    Submenu {
        id: String,
        text: String,
        enabled: bool,
        items: Vec<Entry>,
    },
    Separator,
}

/// What clicking an entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    SignIn,
    SignOut,
    UseEnvironment(String),
    OpenConfluence,
    CopyCloneHttp,
    CopyCloneSsh,
    OpenWindow,
    CopyDiagnostics,
    ToggleAutostart,
    Quit,
}

pub const STATUS: &str = "status";
pub const SIGN_IN: &str = "sign-in";
pub const SIGN_OUT: &str = "sign-out";
pub const ENVIRONMENTS: &str = "environments";
pub const ENV_PREFIX: &str = "env:";
pub const OPEN_CONFLUENCE: &str = "open-confluence";
pub const COPY_CLONE: &str = "copy-clone";
pub const COPY_CLONE_HTTP: &str = "copy-clone:http";
pub const COPY_CLONE_SSH: &str = "copy-clone:ssh";
pub const OPEN_WINDOW: &str = "open-window";
pub const COPY_DIAGNOSTICS: &str = "copy-diagnostics";
pub const AUTOSTART: &str = "autostart";
pub const QUIT: &str = "quit";

impl Action {
    /// The action of the entry with `id`; `None` for entries that only show.
    pub fn from_id(id: &str) -> Option<Action> {
        Some(match id {
            SIGN_IN => Action::SignIn,
            SIGN_OUT => Action::SignOut,
            OPEN_CONFLUENCE => Action::OpenConfluence,
            COPY_CLONE_HTTP => Action::CopyCloneHttp,
            COPY_CLONE_SSH => Action::CopyCloneSsh,
            OPEN_WINDOW => Action::OpenWindow,
            COPY_DIAGNOSTICS => Action::CopyDiagnostics,
            AUTOSTART => Action::ToggleAutostart,
            QUIT => Action::Quit,
            other => Action::UseEnvironment(other.strip_prefix(ENV_PREFIX)?.to_string()),
        })
    }
}

fn item(id: &str, text: impl Into<String>, enabled: bool) -> Entry {
    Entry::Item {
        id: id.into(),
        text: text.into(),
        enabled,
    }
}

/// The menu for `s`; `autostart` is whether "Start at login" is on.
pub fn build(s: &Snapshot, autostart: bool) -> Vec<Entry> {
    let mut m = vec![item(STATUS, s.status_line.clone(), false)];
    if s.environment.is_some() && s.interactive {
        if s.signing_in.is_some() {
            m.push(item(SIGN_IN, "Signing in… (open the browser again)", true));
        } else if s.phase.wants_sign_in() {
            m.push(item(SIGN_IN, "Sign in…", true));
        } else if matches!(
            s.phase,
            Phase::Connected | Phase::Connecting { .. } | Phase::Reconnecting { .. }
        ) {
            m.push(item(SIGN_OUT, "Sign out", true));
        }
    }
    let envs: Vec<Entry> = if s.environments.is_empty() {
        vec![item("env-none", "No environments configured", false)]
    } else {
        s.environments
            .iter()
            .map(|e| Entry::Check {
                id: format!("{ENV_PREFIX}{}", e.name),
                text: if e.locked {
                    format!(
                        "{} (set by {})",
                        e.name,
                        s.organization.as_deref().unwrap_or("your organisation")
                    )
                } else {
                    e.name.clone()
                },
                // The organisation fixes the environment: shown, not switchable.
                enabled: !s.environment_fixed,
                checked: e.current,
            })
            .collect()
    };
    m.push(Entry::Submenu {
        id: ENVIRONMENTS.into(),
        text: "Environment".into(),
        enabled: true,
        items: envs,
    });
    m.push(Entry::Separator);
    m.push(item(
        OPEN_CONFLUENCE,
        "Open Confluence",
        s.links.confluence.is_some(),
    ));
    let mut clone = Vec::new();
    if let Some(u) = &s.links.clone_http {
        clone.push(item(COPY_CLONE_HTTP, format!("HTTP  {u}"), true));
    }
    if let Some(u) = &s.links.clone_ssh {
        clone.push(item(COPY_CLONE_SSH, format!("SSH  {u}"), true));
    }
    let any_clone = !clone.is_empty();
    if !any_clone {
        clone.push(item("copy-clone-none", "Bitbucket is not available", false));
    }
    m.push(Entry::Submenu {
        id: COPY_CLONE.into(),
        text: "Copy git clone URL".into(),
        enabled: any_clone,
        items: clone,
    });
    m.push(item(OPEN_WINDOW, "Open status window…", true));
    m.push(item(COPY_DIAGNOSTICS, "Copy diagnostics", true));
    m.push(Entry::Separator);
    m.push(Entry::Check {
        id: AUTOSTART.into(),
        text: "Start at login".into(),
        enabled: !s.start_at_login_locked,
        checked: autostart,
    });
    m.push(item(QUIT, "Quit Gangway", true));
    m
}

/// Finds the entry with `id` (searching submenus).
pub fn find<'a>(entries: &'a [Entry], id: &str) -> Option<&'a Entry> {
    entries.iter().find_map(|e| match e {
        Entry::Item { id: i, .. } | Entry::Check { id: i, .. } if i == id => Some(e),
        Entry::Submenu { id: i, items, .. } => {
            if i == id {
                Some(e)
            } else {
                find(items, id)
            }
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gangway_agent::status::{EnvironmentEntry, Frontend, Links};

    fn snapshot(phase: Phase) -> Snapshot {
        let env = Some("Production".to_string());
        Snapshot {
            version: "0.1.0".into(),
            pid: 1,
            frontend: Frontend::Tray,
            status_line: gangway_agent::status::status_line(env.as_deref(), Some("alice"), &phase),
            environment: env,
            relay: Some("https://gangway.example.com".into()),
            environments: vec![
                EnvironmentEntry {
                    name: "Production".into(),
                    relay: "https://gangway.example.com".into(),
                    current: true,
                    locked: false,
                },
                EnvironmentEntry {
                    name: "Staging".into(),
                    relay: "https://gangway.staging.example.com".into(),
                    current: false,
                    locked: false,
                },
            ],
            organization: None,
            environment_fixed: false,
            start_at_login_locked: false,
            phase,
            phase_since: 0,
            user: Some("alice".into()),
            groups: vec![],
            token_expires_at: None,
            refreshable: true,
            token_binding: None,
            signing_in: None,
            login_hint: None,
            interactive: true,
            services: vec![],
            problems: vec![],
            notices: vec![],
            door: Default::default(),
            links: Links {
                confluence: Some("http://127.0.0.1:8090/".into()),
                clone_http: Some("http://127.0.0.1:7990/scm/".into()),
                clone_ssh: Some("ssh://git@127.0.0.1:7999/".into()),
            },
        }
    }

    fn text(m: &[Entry], id: &str) -> String {
        match find(m, id) {
            Some(
                Entry::Item { text, .. } | Entry::Check { text, .. } | Entry::Submenu { text, .. },
            ) => text.clone(),
            other => panic!("{id}: {other:?}"),
        }
    }

    #[test]
    fn connected_menu_has_everything() {
        let m = build(&snapshot(Phase::Connected), true);
        assert_eq!(text(&m, STATUS), "alice @ Production — connected");
        assert!(matches!(
            find(&m, STATUS),
            Some(Entry::Item { enabled: false, .. })
        ));
        assert_eq!(text(&m, SIGN_OUT), "Sign out");
        assert!(find(&m, SIGN_IN).is_none());
        assert!(matches!(
            find(&m, "env:Production"),
            Some(Entry::Check { checked: true, .. })
        ));
        assert!(matches!(
            find(&m, "env:Staging"),
            Some(Entry::Check { checked: false, .. })
        ));
        assert!(matches!(
            find(&m, OPEN_CONFLUENCE),
            Some(Entry::Item { enabled: true, .. })
        ));
        assert_eq!(
            text(&m, COPY_CLONE_HTTP),
            "HTTP  http://127.0.0.1:7990/scm/"
        );
        assert_eq!(text(&m, COPY_CLONE_SSH), "SSH  ssh://git@127.0.0.1:7999/");
        assert!(matches!(
            find(&m, AUTOSTART),
            Some(Entry::Check { checked: true, .. })
        ));
        assert_eq!(text(&m, QUIT), "Quit Gangway");
    }

    #[test]
    fn sign_in_needed_offers_sign_in_and_disables_links() {
        let mut s = snapshot(Phase::SignInNeeded {
            reason: "revoked".into(),
        });
        s.links = Links::default();
        let m = build(&s, false);
        assert_eq!(text(&m, STATUS), "Production — sign-in needed");
        assert_eq!(text(&m, SIGN_IN), "Sign in…");
        assert!(find(&m, SIGN_OUT).is_none());
        assert!(matches!(
            find(&m, OPEN_CONFLUENCE),
            Some(Entry::Item { enabled: false, .. })
        ));
        assert!(matches!(
            find(&m, COPY_CLONE),
            Some(Entry::Submenu { enabled: false, .. })
        ));
        s.signing_in = Some("http://idp/auth".into());
        assert!(text(&build(&s, false), SIGN_IN).starts_with("Signing in…"));
        let m = build(&snapshot(Phase::Reconnecting { last_error: None }), false);
        assert_eq!(text(&m, STATUS), "alice @ Production — reconnecting…");
        assert_eq!(text(&m, SIGN_OUT), "Sign out");
        // A broken setup (say, no keychain) offers neither.
        let m = build(
            &snapshot(Phase::Failed {
                reason: "no keychain".into(),
            }),
            false,
        );
        assert!(find(&m, SIGN_IN).is_none() && find(&m, SIGN_OUT).is_none());
    }

    #[test]
    fn ids_map_to_actions() {
        assert_eq!(Action::from_id("sign-in"), Some(Action::SignIn));
        assert_eq!(
            Action::from_id("env:Staging"),
            Some(Action::UseEnvironment("Staging".into()))
        );
        assert_eq!(
            Action::from_id("copy-clone:ssh"),
            Some(Action::CopyCloneSsh)
        );
        assert_eq!(Action::from_id(STATUS), None);
        assert_eq!(Action::from_id("environments"), None);
    }
}
