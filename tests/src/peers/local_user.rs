//! A second local user account, made for one test (`useradd --system
//! --no-create-home`, a unique name) and removed when the test ends, even
//! when it fails: the "another user on this computer" of the local-door
//! tests. Commands run as it through `setpriv`.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::process::require_program;

/// See the module docs. `userdel` on drop.
pub struct LocalUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl LocalUser {
    /// Creates the account (needs root).
    pub fn create() -> Result<Self> {
        let useradd = require_program("useradd")?;
        let name = format!("gwdoor{}{}", std::process::id(), rand_suffix());
        let out = Command::new(useradd)
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(&name)
            .output()?;
        if !out.status.success() {
            bail!("useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // From here on the guard removes it, whatever happens next.
        let mut user = Self {
            name,
            uid: 0,
            gid: 0,
        };
        user.uid = id(&user.name, "-u")?;
        user.gid = id(&user.name, "-g")?;
        Ok(user)
    }

    /// `PROGRAM ARGS…` run as this user (no supplementary groups).
    pub fn command(&self, program: &str) -> Result<Command> {
        let mut cmd = Command::new(require_program("setpriv")?);
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--"])
            .arg(program);
        Ok(cmd)
    }
}

impl Drop for LocalUser {
    fn drop(&mut self) {
        match Command::new("userdel").arg(&self.name).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "userdel {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("userdel {}: {e}", self.name),
        }
    }
}

fn id(name: &str, flag: &str) -> Result<u32> {
    let out = Command::new("id").arg(flag).arg(name).output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("id {flag} {name}"))
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}", n & 0xffff)
}
