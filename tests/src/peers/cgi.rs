//! lighttpd running a test's own shell scripts as CGI: a backend whose
//! timing the test controls (one that stays silent for a while) or that
//! checks what it received (the SHA-256 of a request body), where nginx's
//! config alone cannot.
//!
//! The same real lighttpd as the git server ([`super::git`]), with the
//! same traps: request bodies are buffered to files in its own directory
//! before a script runs (`server.upload-dirs`), and a chunked body on a
//! reused keep-alive connection gets `411` (PEERS.md), so send bodies with
//! a `Content-Length`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use super::process::{require_program, start_on_free_port, startup_timeout, Process};

/// How long lighttpd gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// lighttpd on 127.0.0.1 serving each script at `/cgi/<name>`; stopped
/// on drop.
///
/// A script is a `/bin/sh` CGI program: it writes its header lines
/// (`Content-Type: text/plain`), an empty line, then the body, and reads
/// the request body on stdin (`CONTENT_LENGTH`, `REQUEST_METHOD`,
/// `QUERY_STRING` in its environment). Output reaches the client as the
/// script writes it (`stream-response-body = 2`).
pub struct CgiServer {
    // Dropped first: the process dies before its directory is removed.
    child: Process,
    addr: SocketAddr,
    _dir: TempDir,
}

impl CgiServer {
    /// Starts lighttpd with `scripts` (name → script body, without the
    /// `#!/bin/sh` line). Names are `[a-z0-9_-]`.
    pub fn start(scripts: &[(&str, &str)]) -> Result<Self> {
        let lighttpd = require_program("lighttpd")?;
        let dir = tempfile::Builder::new()
            .prefix("gangway-cgi-")
            .tempdir()
            .context("creating the lighttpd directory")?;
        for sub in ["htdocs", "uploads", "cgi"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        for (name, body) in scripts {
            ensure!(
                !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"_-".contains(&b)),
                "script name {name:?} must be non-empty [a-z0-9_-]"
            );
            let path = dir.path().join("cgi").join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        let conf = dir.path().join("lighttpd.conf");
        let errorlog = dir.path().join("error.log");
        let stderr_log = dir.path().join("stderr.log");
        let (child, addr) = start_on_free_port("lighttpd + CGI scripts", |addr| {
            std::fs::write(&conf, lighttpd_conf(addr.port(), dir.path())?)
                .context("writing lighttpd.conf")?;
            let stderr = std::fs::File::create(&stderr_log)?;
            let mut cmd = Command::new(&lighttpd);
            cmd.arg("-D")
                .arg("-f")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(stderr);
            let mut child = Process::spawn("lighttpd-cgi", &mut cmd)?;
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
        })?;
        Ok(Self {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The address lighttpd listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops lighttpd now (also done on drop). Scripts still running
    /// finish in their own processes.
    pub fn stop(&mut self) {
        self.child.stop();
    }
}

fn lighttpd_conf(port: u16, dir: &Path) -> Result<String> {
    let q = |p: &Path| -> Result<String> {
        let s = p
            .to_str()
            .with_context(|| format!("path {} is not UTF-8", p.display()))?;
        if s.contains('"') || s.contains('\\') {
            bail!("path {s} cannot be quoted in lighttpd.conf");
        }
        Ok(format!("\"{s}\""))
    };
    Ok(format!(
        r#"# Written by gangway-tests (peers/cgi.rs).
server.modules = ("mod_alias", "mod_cgi")
server.bind = "127.0.0.1"
server.port = {port}
server.document-root = {htdocs}
server.errorlog = {errorlog}
server.upload-dirs = ({uploads})
server.stream-response-body = 2
alias.url = ("/cgi/" => {cgi})
$HTTP["url"] =~ "^/cgi/" {{
    cgi.assign = ("" => "")
}}
"#,
        htdocs = q(&dir.join("htdocs"))?,
        errorlog = q(&dir.join("error.log"))?,
        uploads = q(&dir.join("uploads"))?,
        cgi = q(&dir.join("cgi/"))?,
    ))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
