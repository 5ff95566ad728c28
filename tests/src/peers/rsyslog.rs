//! Real rsyslog (Debian's `rsyslogd`) receiving syslog over TCP (`imtcp`,
//! octet-counted framing understood) on a loopback port and writing each
//! message, raw, to a file in a temporary directory: the relay's audit
//! lines as a syslog server receives them. Its own config, pid file and
//! work directory; no other input (nothing from /dev/log); stopped on
//! drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;

use super::process::{require_program, start_on_free_port, startup_timeout, Process};

/// One `rsyslogd -n` listening on 127.0.0.1.
pub struct Rsyslog {
    pub addr: SocketAddr,
    /// Every message received, one per line (`%rawmsg%`).
    pub out: PathBuf,
    _dir: TempDir,
    _process: Process,
}

impl Rsyslog {
    pub fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("messages.log");
        let (addr, process) = start_on_free_port("rsyslogd", |addr| {
            let work = dir.path().join(format!("work-{}", addr.port()));
            std::fs::create_dir_all(&work)?;
            let conf = dir.path().join(format!("rsyslog-{}.conf", addr.port()));
            std::fs::write(
                &conf,
                format!(
                    r#"global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="raw" type="string" string="%rawmsg%\n")
action(type="omfile" file="{out}" template="raw" flushOnTXEnd="on" asyncWriting="off")
"#,
                    work = work.display(),
                    port = addr.port(),
                    out = out.display(),
                ),
            )?;
            let mut cmd = Command::new(require_program("/usr/sbin/rsyslogd")?);
            cmd.arg("-n")
                .arg("-f")
                .arg(&conf)
                .arg("-i")
                .arg(dir.path().join(format!("rsyslogd-{}.pid", addr.port())))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut p = Process::spawn("rsyslogd", cmd)?;
            p.blocking_wait_for_port(addr, startup_timeout(Duration::from_secs(10)))?;
            Ok((addr, p))
        })?;
        Ok(Self {
            addr,
            out,
            _dir: dir,
            _process: process,
        })
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}
