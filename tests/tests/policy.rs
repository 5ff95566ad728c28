//! Managed configuration end to end: policy files from IT decide the
//! user's environments (the real `gangway` binary refuses to change what
//! they lock, `gangway config --effective` says where each value comes
//! from), the tray app shows a locked environment through its menu, and the
//! policy templates generated for macOS and Windows parse and resolve.
//!
//! The agent reads `/etc/gangway/{policy,recommended}.d`; debug builds
//! (these tests) honour `GANGWAY_POLICY_ROOT` instead, so nothing here
//! touches the machine's `/etc`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use gangway_agent::control::Request;
use gangway_agent::status::Phase;
use gangway_tests::gangway::bin_path;
use gangway_tests::peers::desktop::Display;
use gangway_tests::peers::process::{require_program, Process};
use gangway_tests::world::World;
use serde_json::Value;
use support::Control;

struct Home {
    dir: tempfile::TempDir,
    policy: PathBuf,
}

impl Home {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let policy = dir.path().join("etc-gangway");
        std::fs::create_dir_all(policy.join("policy.d"))?;
        std::fs::create_dir_all(policy.join("recommended.d"))?;
        std::fs::create_dir_all(dir.path().join("run"))?;
        Ok(Home { dir, policy })
    }

    fn mandatory(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.policy.join("policy.d").join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }

    fn recommended(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.policy.join("recommended.d").join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }

    fn user_config(&self) -> PathBuf {
        self.dir.path().join(".config/gangway/config.toml")
    }

    fn write_user(&self, text: &str) -> Result<()> {
        std::fs::create_dir_all(self.user_config().parent().unwrap())?;
        std::fs::write(self.user_config(), text)?;
        Ok(())
    }

    /// Runs `gangway ARGS`: (success, stdout, stderr).
    fn gangway(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(bin_path("gangway").unwrap())
            .args(args)
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join(".config"))
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("GANGWAY_POLICY_ROOT", &self.policy)
            .env_remove("GANGWAY_CONTROL_SOCKET")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn effective(&self) -> Value {
        let (ok, out, err) = self.gangway(&["config", "--effective", "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    }
}

fn setting<'a>(effective: &'a Value, key: &str) -> &'a Value {
    effective["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no setting {key} in {effective}"))
}

/// A policy file locks an environment and the user's own: the CLI refuses
/// to change them and names the key and the file; `config --effective`
/// shows each value's source.
#[test]
fn policy_locks_environments_and_the_cli_refuses_to_change_them() -> Result<()> {
    let home = Home::new()?;
    let base = home.mandatory(
        "00-corp.toml",
        "organization_name = \"Example Corp\"\nallowed_relay_hosts = [\"*.example.com\"]\n\
         [[environments]]\nname = \"prod\"\nrelay = \"https://gangway.example.com\"\n",
    )?;
    home.write_user(
        "[[environment]]\nname = \"mine\"\nrelay = \"https://gw.team.example.com\"\n\
         [[environment]]\nname = \"elsewhere\"\nrelay = \"https://relay.other.test\"\n",
    )?;

    let e = home.effective();
    let envs = e["environments"].as_array().unwrap();
    let by_name = |n: &str| envs.iter().find(|x| x["name"] == n);
    let prod = by_name("prod").context("prod")?;
    assert_eq!(prod["locked"], true);
    assert_eq!(prod["source"], "policy");
    assert_eq!(prod["origin"], base.display().to_string());
    assert_eq!(by_name("mine").context("mine")?["source"], "user_file");
    // A user environment on a host the organisation does not allow is left
    // out, and the reason is given.
    assert!(by_name("elsewhere").is_none(), "{e}");
    let problems = e["problems"].to_string();
    assert!(
        problems.contains(
            "relay host relay.other.test is not among the hosts your organisation allows"
        ),
        "{problems}"
    );
    assert_eq!(setting(&e, "organization_name")["value"], "Example Corp");
    assert_eq!(setting(&e, "organization_name")["locked"], true);
    assert_eq!(setting(&e, "allow_device_sign_in")["source"], "default");

    // The locked environment cannot be removed; the message names the key
    // and the file.
    let (ok, _, err) = home.gangway(&["env", "remove", "prod"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "environment \"prod\" is set by your organisation (policy key environments in {})",
            base.display()
        )),
        "{err}"
    );
    // Adding one of the same name, or on a host not allowed, is refused.
    let (ok, _, err) = home.gangway(&["env", "add", "prod", "https://gw.team.example.com"]);
    assert!(!ok);
    assert!(err.contains("policy key environments"), "{err}");
    let (ok, _, err) = home.gangway(&["env", "add", "x", "https://relay.other.test"]);
    assert!(!ok);
    assert!(err.contains("policy key allowed_relay_hosts"), "{err}");
    // The user's own environment on an allowed host still works.
    let (ok, _, err) = home.gangway(&["env", "add", "team2", "https://b.example.com"]);
    assert!(ok, "{err}");
    let (ok, out, err) = home.gangway(&["env", "use", "prod"]);
    assert!(ok, "{err}");
    assert!(out.contains("Default environment is now prod"), "{out}");

    // Now IT forbids the user's own environments and fixes the default.
    let lock = home.mandatory(
        "50-lock.toml",
        "allow_user_environments = false\ndefault_environment = \"prod\"\n",
    )?;
    let e = home.effective();
    let names: Vec<&str> = e["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["prod"], "{e}");
    assert_eq!(setting(&e, "default_environment")["locked"], true);
    let (ok, _, err) = home.gangway(&["env", "add", "team3", "https://c.example.com"]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "adding environments is set by your organisation (policy key allow_user_environments in {})",
            lock.display()
        )),
        "{err}"
    );
    let (ok, _, err) = home.gangway(&["env", "remove", "mine"]);
    assert!(!ok);
    assert!(err.contains("policy key allow_user_environments"), "{err}");
    // Device-flow sign-in turned off: refused before any code is shown.
    home.mandatory("60-device.toml", "allow_device_sign_in = false\n")?;
    let (ok, _, err) = home.gangway(&["login", "--device", "--env", "prod"]);
    assert!(!ok);
    assert!(
        err.contains("signing in with a code (--device) is turned off; it is set by your organisation (policy key allow_device_sign_in"),
        "{err}"
    );
    // The user's file is untouched by every refusal.
    let text = std::fs::read_to_string(home.user_config())?;
    assert!(text.contains("name = \"mine\""), "{text}");
    assert!(text.contains("name = \"team2\""), "{text}");
    Ok(())
}

/// A recommended value is a default: the user's file overrides it; a
/// broken policy file is named (file, key, reason) and the rest is used.
#[test]
fn recommended_values_are_defaults_and_broken_files_are_named() -> Result<()> {
    let home = Home::new()?;
    let rec = home.recommended(
        "00-defaults.toml",
        "proxy = \"http://proxy.example.com:3128\"\nstart_at_login = true\n",
    )?;
    let broken = home.mandatory(
        "10-broken.toml",
        "allow_device_sign_in = \"no\"\n[[environments]\nname =",
    )?;
    let typo = home.mandatory(
        "20-typo.toml",
        "organisation_name = \"Example\"\nstart_at_login = false\n",
    )?;
    let e = home.effective();
    assert_eq!(
        setting(&e, "proxy")["value"],
        "http://proxy.example.com:3128"
    );
    assert_eq!(setting(&e, "proxy")["source"], "recommended");
    assert_eq!(setting(&e, "proxy")["origin"], rec.display().to_string());
    assert_eq!(setting(&e, "proxy")["locked"], false);
    // The valid key of the file with a typo still counts, and wins.
    assert_eq!(setting(&e, "start_at_login")["value"], false);
    assert_eq!(setting(&e, "start_at_login")["source"], "policy");
    let problems = e["problems"].to_string();
    assert!(
        problems.contains(&format!("{}: line 2", broken.display())),
        "{problems}"
    );
    assert!(
        problems.contains(&format!(
            "{}: organisation_name: unknown key",
            typo.display()
        )),
        "{problems}"
    );

    home.write_user("proxy = \"http://my-proxy.example.com:8080\"\n")?;
    let e = home.effective();
    assert_eq!(
        setting(&e, "proxy")["value"],
        "http://my-proxy.example.com:8080"
    );
    assert_eq!(setting(&e, "proxy")["source"], "user_file");
    // The text form says the same.
    let (ok, out, err) = home.gangway(&["config", "--effective"]);
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.contains("proxy")
            && l.contains("http://my-proxy.example.com:8080")
            && l.contains("your config file")),
        "{out}"
    );
    assert!(err.contains("organisation_name: unknown key"), "{err}");
    Ok(())
}

/// The generated macOS and Windows templates are in sync with the schema,
/// parse (plistlib, xmllint) and every reference in them resolves.
#[test]
fn policy_templates_are_in_sync_and_resolve() -> Result<()> {
    require_program("python3")?;
    require_program("xmllint")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |cmd: &mut std::process::Command| -> Result<(bool, String)> {
        let out = cmd.current_dir(&root).output()?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    };
    let (ok, out) = run(
        std::process::Command::new("python3").args(["installer/policy/generate.py", "--check"])
    )?;
    assert!(ok, "generated policy files are out of date: {out}");
    let (ok, out) = run(std::process::Command::new("python3").arg("installer/policy/verify.py"))?;
    assert!(ok, "{out}");
    let gen = root.join("installer/policy/generated/windows");
    let (ok, out) = run(std::process::Command::new("xmllint")
        .arg("--noout")
        .arg(gen.join("gangway.admx"))
        .arg(gen.join("en-US/gangway.adml")))?;
    assert!(ok, "{out}");

    // The verifier is not a rubber stamp: a dangling reference fails it.
    let bad = tempfile::tempdir()?;
    let copy = |rel: &str| -> Result<()> {
        let to = bad.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(root.join("installer/policy/generated").join(rel), to)?;
        Ok(())
    };
    for rel in [
        "macos/com.gangway.agent.mobileconfig",
        "macos/com.gangway.agent.recommended.mobileconfig",
        "macos/com.gangway.agent.json",
        "windows/gangway.admx",
        "windows/en-US/gangway.adml",
        "linux/policy.d/00-example.toml",
        "linux/recommended.d/00-example.toml",
    ] {
        copy(rel)?;
    }
    let admx = bad.path().join("windows/gangway.admx");
    let text = std::fs::read_to_string(&admx)?;
    std::fs::write(
        &admx,
        text.replace("$(string.Proxy_Explain)", "$(string.Proxy_Explian)"),
    )?;
    let (ok, out) = run(std::process::Command::new("python3")
        .arg("installer/policy/verify.py")
        .arg(bad.path()))?;
    assert!(!ok);
    assert!(
        out.contains("$(string.Proxy_Explian) is not in gangway.adml"),
        "{out}"
    );
    Ok(())
}

/// The tray app under a policy that fixes the environment: the menu shows
/// it checked and the others disabled, and switching is refused.
#[tokio::test(flavor = "multi_thread")]
async fn tray_menu_shows_the_policy_lock() -> Result<()> {
    let w = World::start(&["Production", "Staging"]).await?;
    w.write_config(&[])?;
    let policy = w.dir.path().join("etc-gangway");
    std::fs::create_dir_all(policy.join("policy.d"))?;
    std::fs::write(
        policy.join("policy.d/00-corp.toml"),
        format!(
            "organization_name = \"Example Corp\"\ndefault_environment = \"Production\"\n\
             [[environments]]\nname = \"Production\"\nrelay = {:?}\nca_file = {:?}\n",
            w.relay("Production").url(),
            w.cert.cert.to_str().unwrap()
        ),
    )?;
    // The menu is read as data through the control API (the native tray
    // menu itself is tested in desktop.rs), so no tray host is needed here.
    let display = Display::start(1100, 700)?;
    let mut cmd = std::process::Command::new(bin_path("gangway-desktop")?);
    cmd.envs(w.env())
        .envs(display.env())
        .env("GANGWAY_POLICY_ROOT", &policy)
        .env("RUST_LOG", "info")
        .env_remove("GANGWAY_CONTROL_SOCKET")
        .env_remove("WAYLAND_DISPLAY");
    let mut app = Process::spawn_captured("gangway-desktop", cmd)?;
    w.wait_status("sign-in needed", Duration::from_secs(60), |s| {
        matches!(s.phase, Phase::SignInNeeded { .. })
    })
    .await?;
    let menu = w
        .control()
        .request(&Request::Menu, |_, _| {})
        .await?
        .context("no agent")?;
    let env = |id: &str| -> Value {
        menu.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == "environments")
            .and_then(|e| e["items"].as_array())
            .and_then(|items| items.iter().find(|i| i["id"] == id))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let prod = env("env:Production");
    assert_eq!(prod["checked"], true, "{menu}");
    assert_eq!(prod["enabled"], false, "{menu}");
    assert_eq!(prod["text"], "Production (set by Example Corp)", "{menu}");
    assert_eq!(env("env:Staging")["enabled"], false, "{menu}");
    let refused = w
        .control()
        .request(
            &Request::Use {
                environment: "Staging".into(),
            },
            |_, _| {},
        )
        .await;
    let e = format!("{refused:?}");
    assert!(
        e.contains("set by your organisation (policy key default_environment"),
        "{e}"
    );
    let s = w
        .wait_status("still Production", Duration::from_secs(5), |s| {
            s.environment.as_deref() == Some("Production")
        })
        .await?;
    assert_eq!(s.organization.as_deref(), Some("Example Corp"));
    assert!(s.environment_fixed);
    // Quit from the menu: the app and its web processes end with it.
    w.control()
        .request(&Request::Activate { id: "quit".into() }, |_, _| {})
        .await?;
    let status = app
        .wait_exit(Duration::from_secs(20))
        .await
        .context("the app did not quit")?;
    assert!(status.success(), "{status}");
    drop(display);
    Ok(())
}

/// The Windows templates as an MSI, built with wixl and inspected with
/// msiinfo: both files, in PolicyDefinitions, at the workspace's version.
#[test]
fn policy_templates_msi_holds_the_admx_and_adml() -> Result<()> {
    require_program("wixl")?;
    require_program("msiinfo")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir()?;
    let built = std::process::Command::new(root.join("installer/windows/build-policy-msi"))
        .env("CARGO_TARGET_DIR", out.path())
        .output()?;
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let msi = out.path().join(format!(
        "windows/gangway-policy-templates-{}.msi",
        env!("CARGO_PKG_VERSION")
    ));
    let table = |name: &str| -> Result<String> {
        let o = std::process::Command::new("msiinfo")
            .arg("export")
            .arg(&msi)
            .arg(name)
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let files = table("File")?;
    assert!(
        files.contains("gangway.admx") && files.contains("gangway.adml"),
        "{files}"
    );
    let dirs = table("Directory")?;
    assert!(
        dirs.contains("PolicyDefinitions") && dirs.contains("en-US"),
        "{dirs}"
    );
    let props = table("Property")?;
    assert!(
        props.contains(&format!("ProductVersion\t{}", env!("CARGO_PKG_VERSION"))),
        "{props}"
    );
    Ok(())
}
