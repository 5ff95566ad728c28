//! The Debian packages, installed into a clean Debian 12 root: what IT
//! pushes to a laptop and a relay host works there, its unit passes
//! `systemd-analyze verify`, a policy file decides the environments, and
//! removal leaves nothing but the relay's conffile.
//!
//! The packages come from `installer/build-debs` and the root from
//! `installer/test-root prepare` (both run by `scripts/test` before the
//! suite): a debootstrap tree cached under /var/tmp with the packages'
//! dependencies already downloaded, so the install here needs no network.
//! Each run works on a fresh copy of it, in a mount namespace of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use gangway_tests::peers::process::require_program;
use gangway_tests::world::target_dir;

fn base_root() -> PathBuf {
    std::env::var_os("GANGWAY_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/gangway-test-root"))
}

/// `target/debian/NAME_*.deb`, the newest.
fn deb(name: &str) -> Result<PathBuf> {
    let dir = target_dir().join("debian");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "{}: no packages built (run installer/build-debs)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no {name}_*.deb in {} (run installer/build-debs)",
            dir.display()
        )
    })
}

/// A copy of the prepared root, removed on drop.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn fresh() -> Result<Root> {
        let base = base_root();
        ensure!(
            base.join(".gangway-ready").exists(),
            "{}: no prepared Debian root (run installer/test-root prepare)",
            base.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("gangway-root-")
            .tempdir_in("/var/tmp")?;
        let st = Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(format!("{}/.", base.display()))
            .arg(dir.path())
            .status()?;
        ensure!(st.success(), "copying {} failed", base.display());
        Ok(Root { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `script` with `sh -c` inside the root, in mount and network
    /// namespaces of its own (/proc mounted, no network at all): (success,
    /// stdout + stderr).
    fn sh(&self, script: &str) -> Result<(bool, String)> {
        let inner = format!(
            "mount -t proc proc {root}/proc && exec chroot {root} /usr/bin/env -i \
             PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive \
             sh -c {script}",
            root = self.path().display(),
            script = shell_quote(script)
        );
        let out = Command::new("unshare")
            // No network in there: apt installs from the prepared cache.
            .args([
                "--mount",
                "--net",
                "--propagation",
                "private",
                "--fork",
                "sh",
                "-c",
                &inner,
            ])
            .output()?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    fn ok(&self, script: &str) -> Result<String> {
        let (ok, out) = self.sh(script)?;
        if !ok {
            bail!("in the Debian root, `{script}` failed:\n{out}");
        }
        Ok(out)
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn debs_install_work_and_uninstall_cleanly_in_a_clean_debian_root() -> Result<()> {
    for p in ["unshare", "chroot", "cp"] {
        require_program(p)?;
    }
    let gangway = deb("gangway")?;
    let relay = deb("gangway-relay")?;
    let root = Root::fresh()?;
    let debs = root.path().join("tmp/debs");
    std::fs::create_dir_all(&debs)?;
    std::fs::copy(&gangway, debs.join(gangway.file_name().unwrap()))?;
    std::fs::copy(&relay, debs.join(relay.file_name().unwrap()))?;

    // Installed with apt from the cache only: the Depends lines must be
    // complete, or this fails.
    root.ok("apt-get -q install -y --no-install-recommends /tmp/debs/*.deb")?;
    let version = root.ok("gangway --version")?;
    ensure!(
        version.trim() == format!("gangway {}", env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    // Every library the tray app links is there (WebKitGTK and friends).
    let ldd = root.ok("ldd /usr/bin/gangway-desktop")?;
    ensure!(!ldd.contains("not found"), "{ldd}");
    ensure!(ldd.contains("libwebkit2gtk-4.1"), "{ldd}");
    root.ok("test -f /usr/share/applications/gangway.desktop && test -f /usr/share/icons/hicolor/128x128/apps/gangway.png")?;
    root.ok("test -d /etc/gangway/policy.d && test -d /etc/gangway/recommended.d")?;

    // The relay: its own user, a config only it (and root) reads, a unit
    // that systemd accepts.
    let user = root.ok("getent passwd gangway-relay")?;
    ensure!(user.contains(":/nonexistent:"), "{user}");
    let mode = root.ok("stat -c '%a %U %G' /etc/gangway/relay.toml")?;
    ensure!(mode.trim() == "640 root gangway-relay", "{mode}");
    let verify = root.ok(
        "systemd-analyze verify /usr/lib/systemd/system/gangway-relay.service 2>&1; echo rc=$?",
    )?;
    ensure!(
        verify.trim_end().ends_with("rc=0"),
        "systemd-analyze verify:\n{verify}"
    );
    let unit = root.ok("cat /usr/lib/systemd/system/gangway-relay.service")?;
    for line in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        ensure!(unit.contains(line), "unit lacks {line:?}");
    }
    // The shipped example config is refused until it is edited (its
    // certificate files do not exist), with the file named.
    let (ok, out) = root.sh("gangway-relay check-config /etc/gangway/relay.toml")?;
    ensure!(!ok, "the example config passed check-config: {out}");
    ensure!(out.contains("/etc/gangway/relay.toml"), "{out}");

    // IT's policy file decides the environments, shown locked.
    std::fs::write(
        root.path().join("etc/gangway/policy.d/00-corp.toml"),
        "organization_name = \"Example Corp\"\nallow_user_environments = false\n\
         [[environments]]\nname = \"prod\"\nrelay = \"https://gangway.example.com\"\n",
    )?;
    let eff = root.ok("gangway config --effective --json")?;
    let eff: serde_json::Value = serde_json::from_str(&eff).context(eff.clone())?;
    ensure!(eff["environments"][0]["name"] == "prod", "{eff}");
    ensure!(eff["environments"][0]["locked"] == true, "{eff}");
    ensure!(
        eff["environments"][0]["origin"] == "/etc/gangway/policy.d/00-corp.toml",
        "{eff}"
    );
    let (ok, out) = root.sh("gangway env add mine https://gw.example.org")?;
    ensure!(
        !ok && out.contains("policy key allow_user_environments"),
        "{out}"
    );
    std::fs::remove_file(root.path().join("etc/gangway/policy.d/00-corp.toml"))?;

    // Removal leaves no file but the relay's conffile; purge takes that
    // and the user too.
    let listed = root.ok("dpkg -L gangway gangway-relay")?;
    root.ok("apt-get -q remove -y gangway gangway-relay")?;
    let mut left = Vec::new();
    for path in listed.lines().filter(|l| l.starts_with('/')) {
        let p = root.path().join(path.trim_start_matches('/'));
        if p.is_file() || p.is_symlink() {
            left.push(path.to_string());
        }
    }
    ensure!(
        left == ["/etc/gangway/relay.toml"],
        "left after removal: {left:?}"
    );
    ensure!(
        !root.path().join("etc/gangway/policy.d").exists(),
        "policy.d left behind"
    );
    root.ok("apt-get -q purge -y gangway-relay")?;
    ensure!(
        !root.path().join("etc/gangway/relay.toml").exists(),
        "conffile left after purge"
    );
    let (ok, _) = root.sh("getent passwd gangway-relay")?;
    ensure!(!ok, "the gangway-relay user is left after purge");
    Ok(())
}
