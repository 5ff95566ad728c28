//! `gangway bugreport`: what IT needs for a ticket, in one archive (or, for
//! the tray's "Copy diagnostics", one text): the doctor's report, the
//! effective config with its sources, the user's config file, the
//! environment variables Gangway reads, versions, the running agent's
//! status and the recent agent logs.
//!
//! Every section passes through [`crate::redact`] when it is made (there
//! is no other way to make one), with the secrets this process knows
//! added (the token in use, the keychain's refresh token, the door's
//! secrets in the tray): no token, secret or password is written.
//!
//! The archive is a `.tar.gz`: opened by `tar` on Linux and macOS and by
//! Windows 10's own `tar.exe`, with the small, long-kept `tar` and
//! `flate2` crates (zip would add a larger crate for no gain).

use std::io::{self, Write};
use std::path::PathBuf;

use super::{Probe, Report};
use crate::keychain::{Item, Keychain};
use crate::redact::Redactor;

/// The most of each log file a report holds (its end).
pub const LOG_TAIL_BYTES: u64 = 256 * 1024;

/// Environment variables Gangway (or what it starts) reads, beside the
/// proxy's ([`crate::net::proxy::VARIABLES`]).
const ENV_NAMES: &[&str] = &[
    "GANGWAY_TOKEN",
    "GANGWAY_CONTROL_SOCKET",
    "GANGWAY_POLICY_ROOT",
    "RUST_LOG",
    "BROWSER",
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
    "XDG_RUNTIME_DIR",
    "XDG_SESSION_TYPE",
    "XDG_CURRENT_DESKTOP",
    "DBUS_SESSION_BUS_ADDRESS",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "GIT_SSH_COMMAND",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// One file of the report: its text is redacted when it is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    name: String,
    text: String,
}

impl Section {
    fn new(redactor: &Redactor, name: &str, text: &str) -> Self {
        Section {
            name: redactor.apply(name),
            text: redactor.apply(text),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A whole report.
#[derive(Debug, Clone)]
pub struct Bugreport {
    sections: Vec<Section>,
}

/// What the report reads besides the probe.
#[derive(Default)]
pub struct Extra {
    /// Where the agent's logs are ([`crate::logfile::log_dir`]).
    pub log_dir: Option<PathBuf>,
    /// Secrets this process knows (the door's, in the tray).
    pub secrets: Vec<String>,
    /// The running agent's own status text, if the caller has it.
    pub agent_status: Option<String>,
}

impl Bugreport {
    /// Collects the report after the doctor's `report` from `probe`.
    pub async fn collect(probe: &Probe, report: &Report, extra: Extra) -> Self {
        let mut redactor = Redactor::new();
        for s in extra.secrets {
            redactor = redactor.with_secret(s);
        }
        let known = tokio::time::timeout(std::time::Duration::from_secs(20), known_secrets(probe))
            .await
            .unwrap_or_default();
        for s in known {
            redactor = redactor.with_secret(s);
        }
        let r = &redactor;
        let mut sections = vec![
            Section::new(r, "README.txt", README),
            Section::new(
                r,
                "doctor.json",
                &serde_json::to_string_pretty(report).unwrap_or_default(),
            ),
            Section::new(r, "doctor.txt", &report.text()),
            Section::new(r, "versions.txt", &versions_text(report)),
            Section::new(r, "config-effective.json", &effective_config(probe)),
        ];
        match std::fs::read_to_string(&probe.inputs.config_path) {
            Ok(t) => sections.push(Section::new(r, "config.toml", &t)),
            Err(e) => sections.push(Section::new(
                r,
                "config.toml",
                &format!("# {}: {e}\n", probe.inputs.config_path.display()),
            )),
        }
        sections.push(Section::new(r, "environment.txt", &environment_text()));
        let status = match extra.agent_status {
            Some(s) => s,
            None => match probe.agent().await {
                Some(s) => s.diagnostics(),
                None => "No Gangway agent is running.\n".into(),
            },
        };
        sections.push(Section::new(r, "agent-status.txt", &status));
        match extra.log_dir.or_else(crate::logfile::log_dir) {
            Some(dir) => {
                let files = crate::logfile::files(&dir);
                if files.is_empty() {
                    sections.push(Section::new(
                        r,
                        "logs/README.txt",
                        &format!("No agent log in {}.\n", dir.display()),
                    ));
                }
                for f in files {
                    let name = f.file_name().unwrap_or_default().to_string_lossy();
                    let text = crate::logfile::tail(&f, LOG_TAIL_BYTES)
                        .unwrap_or_else(|e| format!("cannot read {}: {e}\n", f.display()));
                    sections.push(Section::new(r, &format!("logs/{name}"), &text));
                }
            }
            None => sections.push(Section::new(
                r,
                "logs/README.txt",
                "This system has no state directory for logs.\n",
            )),
        }
        Bugreport { sections }
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// The report as one text (the tray's "Copy diagnostics").
    pub fn text(&self) -> String {
        let mut o = String::new();
        for s in &self.sections {
            o.push_str(&format!("===== {} =====\n", s.name));
            o.push_str(&s.text);
            if !s.text.ends_with('\n') {
                o.push('\n');
            }
            o.push('\n');
        }
        o
    }

    /// Writes the report as a `.tar.gz` with its files under `gangway-bugreport/`.
    pub fn write_tar_gz<W: Write>(&self, w: W) -> io::Result<W> {
        let gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for s in &self.sections {
            let mut header = tar::Header::new_gnu();
            header.set_size(s.text.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(mtime);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(
                &mut header,
                format!("gangway-bugreport/{}", s.name),
                s.text.as_bytes(),
            )?;
        }
        tar.into_inner()?.finish()
    }
}

const README: &str = "Gangway bug report

doctor.json / doctor.txt   every `gangway doctor` check: PASS/WARN/FAIL, what was found, the fix
versions.txt               Gangway, the OS, git, ssh and the relay
config-effective.json      every setting in effect and where it comes from (policy, your file, default)
config.toml                your config file
environment.txt            the environment variables Gangway reads
agent-status.txt           the running agent's status
logs/                      the end of the agent's log files

Tokens, secrets, cookies and passwords (also in URLs) are replaced by [redacted].
";

/// The token in use, the keychain's tokens and this device's DPoP key, to
/// take out by value.
async fn known_secrets(probe: &Probe) -> Vec<String> {
    let mut known = Vec::new();
    if let Some(t) = &probe.inputs.fixed_token {
        known.push(t.expose().to_string());
    }
    if let Ok(t) = probe.token().await {
        known.push(t.token.expose().to_string());
    }
    if let Some(env) = probe.environment() {
        let k = Keychain::new(probe.inputs.store.clone(), &env.relay);
        // A locked keychain may wait for a password: not for long.
        let read = k.run(|k| {
            Ok((
                k.get(Item::Refresh)?,
                k.get(Item::Access)?,
                k.get(Item::DpopKey)?,
            ))
        });
        if let Ok(Ok((refresh, access, key))) =
            tokio::time::timeout(std::time::Duration::from_secs(10), read).await
        {
            known.extend(refresh);
            known.extend(key);
            if let Some(a) = access {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&a) {
                    known.extend(v["token"].as_str().map(str::to_string));
                }
                known.push(a);
            }
        }
    }
    known
}

fn versions_text(report: &Report) -> String {
    let v = &report.versions;
    let or = |o: &Option<String>| o.clone().unwrap_or_else(|| "(not found)".into());
    format!(
        "gangway {}\nos {}\ngit {}\nssh {}\nrelay {}\n",
        v.gangway,
        v.os,
        or(&v.git),
        or(&v.ssh),
        or(&v.relay)
    )
}

fn effective_config(probe: &Probe) -> String {
    let doc = match &probe.config {
        Ok(c) => {
            let envs: Vec<_> = c
                .environments
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "name": e.name,
                        "relay": crate::keychain::namespace_for(&e.relay),
                        "ca_file": e.ca_file,
                        "ports": e.ports,
                        "source": e.source,
                        "origin": e.origin,
                        "locked": e.locked(),
                    })
                })
                .collect();
            serde_json::json!({
                "config_file": probe.inputs.config_path,
                "default_environment": c.default_environment,
                "settings": c.settings.table,
                "environments": envs,
                "problems": c.problems,
            })
        }
        Err(e) => serde_json::json!({
            "config_file": probe.inputs.config_path,
            "error": e,
        }),
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn environment_text() -> String {
    let mut o = String::new();
    for name in ENV_NAMES.iter().chain(&crate::net::proxy::VARIABLES) {
        match std::env::var(name) {
            // The token itself never: only that it is set.
            Ok(v) if *name == "GANGWAY_TOKEN" => {
                o.push_str(&format!("{name} is set ({} characters)\n", v.len()))
            }
            Ok(v) => o.push_str(&format!("{name}={v}\n")),
            Err(_) => {}
        }
    }
    if o.is_empty() {
        o.push_str("(none of the variables Gangway reads is set)\n");
    }
    o
}
