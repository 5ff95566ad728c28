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

use anyhow::{ensure, Context, Result};
use tempfile::TempDir;

use super::lighttpd::{self, quote};
use super::process::Process;

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
        let dir = tempfile::Builder::new()
            .prefix("gangway-cgi-")
            .tempdir()
            .context("creating the lighttpd directory")?;
        std::fs::create_dir(dir.path().join("cgi"))?;
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
        let (child, addr) = lighttpd::start(
            "lighttpd + CGI scripts",
            "lighttpd-cgi",
            dir.path(),
            |port| lighttpd_conf(port, dir.path()),
        )?;
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
    let base = lighttpd::base_conf("peers/cgi.rs", r#""mod_alias", "mod_cgi""#, port, dir)?;
    Ok(format!(
        r#"{base}alias.url = ("/cgi/" => {cgi})
$HTTP["url"] =~ "^/cgi/" {{
    cgi.assign = ("" => "")
}}
"#,
        cgi = quote(&dir.join("cgi/"))?,
    ))
}
