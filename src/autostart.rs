//! "Start at login": an XDG autostart entry on Linux
//! (`$XDG_CONFIG_HOME/autostart/gangway.desktop`), a LaunchAgent on macOS
//! (`~/Library/LaunchAgents/com.gangway.desktop.plist`), the `Run` registry
//! key on Windows. The app starts with `--autostart` then, which keeps its
//! window closed.

use std::path::{Path, PathBuf};

/// Where the login item lives and what it starts.
#[derive(Debug, Clone)]
pub struct Autostart {
    /// The file (Linux, macOS); `None` on Windows (registry).
    file: Option<PathBuf>,
    exe: PathBuf,
}

/// Argument marking a start at login.
pub const FLAG: &str = "--autostart";

impl Autostart {
    /// The platform's login item for this executable.
    pub fn for_this_user() -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("gangway-desktop"));
        let file = if cfg!(target_os = "macos") {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join("Library/LaunchAgents/com.gangway.desktop.plist"))
        } else if cfg!(windows) {
            None
        } else {
            directories::BaseDirs::new()
                .map(|d| d.config_dir().join("autostart").join("gangway.desktop"))
        };
        Autostart { file, exe }
    }

    /// A login item in `file` starting `exe` (tests).
    pub fn at(file: &Path, exe: &Path) -> Self {
        Autostart {
            file: Some(file.to_path_buf()),
            exe: exe.to_path_buf(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        match &self.file {
            Some(f) => f.is_file(),
            None => windows_run_key(None).is_ok_and(|v| v),
        }
    }

    /// Turns the login item on or off.
    pub fn set(&self, on: bool) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return windows_run_key(Some((on, &self.exe))).map(|_| ());
        };
        if !on {
            return match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let exe = self.exe.display().to_string();
        let text = if cfg!(target_os = "macos") {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
                 <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
                 <plist version=\"1.0\"><dict>\n\
                 <key>Label</key><string>com.gangway.desktop</string>\n\
                 <key>ProgramArguments</key><array><string>{}</string><string>{FLAG}</string></array>\n\
                 <key>RunAtLoad</key><true/>\n\
                 </dict></plist>\n",
                xml_escape(&exe)
            )
        } else {
            format!(
                "[Desktop Entry]\nType=Application\nName=Gangway\n\
                 Comment=Reach Bitbucket and Confluence without a VPN\n\
                 Exec=\"{}\" {FLAG}\nIcon=gangway-desktop\nTerminal=false\n\
                 X-GNOME-Autostart-enabled=true\n",
                exe.replace('\\', "\\\\").replace('"', "\\\"")
            )
        };
        std::fs::write(file, text)
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Reads (`None`) or writes (`Some((on, exe))`) the Windows Run key
/// through `reg.exe`. Elsewhere: never enabled.
fn windows_run_key(change: Option<(bool, &Path)>) -> std::io::Result<bool> {
    if !cfg!(windows) {
        return Ok(false);
    }
    const KEY: &str = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run";
    let mut cmd = std::process::Command::new("reg");
    match change {
        None => cmd.args(["query", KEY, "/v", "Gangway"]),
        Some((true, exe)) => cmd.args([
            "add",
            KEY,
            "/v",
            "Gangway",
            "/t",
            "REG_SZ",
            "/f",
            "/d",
            &format!("\"{}\" {FLAG}", exe.display()),
        ]),
        Some((false, _)) => cmd.args(["delete", KEY, "/v", "Gangway", "/f"]),
    };
    Ok(cmd.output()?.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn toggles_an_xdg_autostart_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("autostart/gangway.desktop");
        let a = Autostart::at(&file, Path::new("/opt/Gangway/gangway-desktop"));
        assert!(!a.is_enabled());
        a.set(true).unwrap();
        assert!(a.is_enabled());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("Exec=\"/opt/Gangway/gangway-desktop\" --autostart"),
            "{text}"
        );
        a.set(false).unwrap();
        assert!(!a.is_enabled());
        a.set(false).unwrap();
    }
}
