//! The lighttpd launch shared by the CGI server ([`super::cgi`]) and the
//! git smart-HTTP server ([`super::git`]): a config written for the port
//! [`start_on_free_port`] picked, `lighttpd -D`, and its logs in the error
//! when it does not come up.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::process::{require_program, start_on_free_port, startup_timeout, Process};

/// How long lighttpd gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts lighttpd (`what` in errors, `name` for its process) in `dir`,
/// which gets `htdocs/` and `uploads/` and holds `lighttpd.conf`,
/// `error.log` and `stderr.log`. `conf` writes the config for a port.
pub(super) fn start(
    what: &str,
    name: &str,
    dir: &Path,
    conf: impl Fn(u16) -> Result<String>,
) -> Result<(Process, SocketAddr)> {
    let lighttpd = require_program("lighttpd")?;
    for sub in ["htdocs", "uploads"] {
        std::fs::create_dir(dir.join(sub))?;
    }
    let conf_path = dir.join("lighttpd.conf");
    let errorlog = dir.join("error.log");
    let stderr_log = dir.join("stderr.log");
    start_on_free_port(what, |addr| {
        std::fs::write(&conf_path, conf(addr.port())?).context("writing lighttpd.conf")?;
        let stderr = std::fs::File::create(&stderr_log)?;
        let mut cmd = Command::new(&lighttpd);
        cmd.arg("-D")
            .arg("-f")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = Process::spawn(name, &mut cmd)?;
        child
            .blocking_wait_for_port(addr, startup_timeout(START_TIMEOUT))
            .with_context(|| {
                format!(
                    "lighttpd logs:\n{}{}",
                    read_log(&errorlog),
                    read_log(&stderr_log)
                )
            })?;
        Ok((child, addr))
    })
}

/// The config lines both servers start with: a header naming `by`, the
/// `modules`, and the listener, directories and streaming (`dir` as given
/// to [`start`]). The caller appends its alias and CGI lines.
pub(super) fn base_conf(by: &str, modules: &str, port: u16, dir: &Path) -> Result<String> {
    Ok(format!(
        r#"# Written by gangway-tests ({by}).
server.modules = ({modules})
server.bind = "127.0.0.1"
server.port = {port}
server.document-root = {htdocs}
server.errorlog = {errorlog}
server.upload-dirs = ({uploads})
server.stream-response-body = 2
"#,
        htdocs = quote(&dir.join("htdocs"))?,
        errorlog = quote(&dir.join("error.log"))?,
        uploads = quote(&dir.join("uploads"))?,
    ))
}

/// `p` as a quoted lighttpd.conf string.
pub(super) fn quote(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))?;
    if s.contains('"') || s.contains('\\') {
        bail!("path {s} cannot be quoted in lighttpd.conf");
    }
    Ok(format!("\"{s}\""))
}

/// A log file's text so far; empty if there is none yet.
pub(super) fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
