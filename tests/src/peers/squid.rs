//! Squid (Debian's `squid-openssl` 5.7) as the corporate HTTP proxy: HTTP
//! CONNECT, optionally Basic proxy authentication (`basic_ncsa_auth` over
//! an `htpasswd` file) and TLS inspection (ssl-bump with its own CA and
//! `security_file_certgen`). Names given to [`SquidOptions::hosts`] are
//! resolved by squid alone (its `hosts_file`), so a test can address peers
//! on 127.0.0.1 by names the agent cannot resolve — every connection that
//! works went through squid.
//!
//! Squid cannot listen on port 0 and say which port it got, so it is
//! started on a port free a moment ago ([`start_on_free_port`]) and awaited
//! there. Started in the foreground (`-N`); stopped when dropped. As root it
//! drops to the user `proxy`, so its folder is opened up for that user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::process::{require_program, start_on_free_port, startup_timeout, Process};

/// The squid binary of Debian's packages.
const SQUID: &str = "/usr/sbin/squid";
const NCSA_AUTH: &str = "/usr/lib/squid/basic_ncsa_auth";
const CERTGEN: &str = "/usr/lib/squid/security_file_certgen";

/// TLS inspection: the CA squid signs its forged certificates with, and
/// the CA it trusts for the servers behind it.
pub struct Bump<'a> {
    /// PEM file with the inspecting CA's certificate and key.
    pub ca_cert_and_key: &'a Path,
    /// The CA (PEM) squid verifies the real servers with.
    pub upstream_ca: &'a Path,
}

/// What the proxy looks like.
#[derive(Default)]
pub struct SquidOptions<'a> {
    /// Names squid resolves to 127.0.0.1 (its hosts file).
    pub hosts: &'a [&'a str],
    /// Ports CONNECT may reach (squid's `SSL_ports`); others are refused.
    pub connect_ports: Vec<u16>,
    /// Basic proxy users (name, password); none: no authentication.
    pub users: &'a [(&'a str, &'a str)],
    pub bump: Option<Bump<'a>>,
}

/// A running squid.
pub struct Squid {
    pub process: Process,
    pub addr: SocketAddr,
    access_log: PathBuf,
    _dir: TempDir,
}

impl Squid {
    pub fn start(opts: &SquidOptions<'_>) -> Result<Self> {
        let squid = require_program(SQUID)?;
        let dir = tempfile::Builder::new()
            .prefix("gangway-squid-")
            .tempdir()?;
        let root = dir.path();
        let proxy_user = proxy_owner()?;
        open_up(root, proxy_user)?;

        let hosts: String = opts
            .hosts
            .iter()
            .map(|h| format!("127.0.0.1 {h}\n"))
            .collect();
        std::fs::write(root.join("hosts"), hosts)?;
        let ports: Vec<String> = opts.connect_ports.iter().map(u16::to_string).collect();
        let mut auth = String::new();
        if !opts.users.is_empty() {
            let passwd = root.join("passwd");
            for (i, (user, pass)) in opts.users.iter().enumerate() {
                let mut cmd = Command::new(require_program("htpasswd")?);
                // -b: password as an argument (a test password), -B bcrypt.
                cmd.arg("-bB");
                if i == 0 {
                    cmd.arg("-c");
                }
                let out = cmd.arg(&passwd).arg(user).arg(pass).output()?;
                if !out.status.success() {
                    bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            open_up(&passwd, proxy_user)?;
            auth = format!(
                "auth_param basic program {NCSA_AUTH} {}\n\
                 auth_param basic realm corp-proxy\n\
                 auth_param basic children 2 startup=1 idle=1\n\
                 acl authed proxy_auth REQUIRED\n",
                passwd.display()
            );
        }
        let allow = if opts.users.is_empty() {
            "http_access allow localhost\n"
        } else {
            "http_access allow authed\n"
        };
        let mut bump_port = String::new();
        let mut bump = String::new();
        if let Some(b) = &opts.bump {
            let db = root.join("ssl_db");
            let out = Command::new(require_program(CERTGEN)?)
                .arg("-c")
                .arg("-s")
                .arg(&db)
                .args(["-M", "4MB"])
                .output()?;
            if !out.status.success() {
                bail!(
                    "security_file_certgen -c: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            open_up_tree(&db, proxy_user)?;
            let ca = root.join("bump-ca.pem");
            std::fs::copy(b.ca_cert_and_key, &ca)?;
            let upstream = root.join("upstream-ca.pem");
            std::fs::copy(b.upstream_ca, &upstream)?;
            open_up(&ca, proxy_user)?;
            open_up(&upstream, proxy_user)?;
            bump_port = format!(
                " ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=4MB tls-cert={}",
                ca.display()
            );
            bump = format!(
                "sslcrtd_program {CERTGEN} -s {} -M 4MB\n\
                 sslcrtd_children 2 startup=1 idle=1\n\
                 acl step1 at_step SslBump1\n\
                 ssl_bump peek step1\n\
                 ssl_bump bump all\n\
                 http_upgrade_request_protocols OTHER allow all\n\
                 tls_outgoing_options cafile={}\n",
                db.display(),
                upstream.display()
            );
        }
        let access_log = root.join("access.log");
        start_on_free_port("squid", |addr| {
            let config = format!(
                "http_port {addr}{bump_port}\n\
                 visible_hostname gangway-test-proxy\n\
                 pid_filename none\n\
                 cache deny all\n\
                 cache_mem 8 MB\n\
                 coredump_dir {root}\n\
                 access_log stdio:{log} squid\n\
                 cache_log stdio:{root}/cache.log\n\
                 logfile_rotate 0\n\
                 pinger_enable off\n\
                 netdb_filename none\n\
                 shutdown_lifetime 0 seconds\n\
                 hosts_file {root}/hosts\n\
                 dns_nameservers 127.0.0.1\n\
                 dns_timeout 2 seconds\n\
                 acl SSL_ports port {ports}\n\
                 acl CONNECT method CONNECT\n\
                 {auth}\
                 {bump}\
                 http_access deny CONNECT !SSL_ports\n\
                 {allow}\
                 http_access deny all\n",
                root = root.display(),
                log = access_log.display(),
                ports = if ports.is_empty() {
                    "1".to_string()
                } else {
                    ports.join(" ")
                },
            );
            let file = root.join("squid.conf");
            std::fs::write(&file, config)?;
            open_up(&file, proxy_user)?;
            let check = Command::new(&squid)
                .arg("-k")
                .arg("parse")
                .arg("-f")
                .arg(&file)
                .output()?;
            if !check.status.success() {
                bail!(
                    "squid -k parse refused the config: {}",
                    String::from_utf8_lossy(&check.stderr)
                );
            }
            let mut cmd = Command::new(&squid);
            cmd.arg("-N")
                .arg("-f")
                .arg(&file)
                .arg("-d")
                .arg("1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut process = Process::spawn("squid", cmd)?;
            process.blocking_wait_for_port(addr, startup_timeout(Duration::from_secs(20)))?;
            Ok((process, addr))
        })
        .map(|(process, addr)| Squid {
            process,
            addr,
            access_log,
            _dir: dir,
        })
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT` (no credentials when `user` is
    /// `None`).
    pub fn url(&self, user: Option<(&str, &str)>) -> String {
        match user {
            Some((u, p)) => format!("http://{u}:{p}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// The access log's lines so far (squid's native format:
    /// `time elapsed client code/status bytes method URL user hierarchy type`).
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until a line of the access log has `method` and a URL
    /// containing `target` (e.g. `CONNECT`, `relay.corp.test:8443`); squid
    /// writes a CONNECT's line when the tunnel closes, so callers wait.
    pub async fn wait_logged(
        &self,
        method: &str,
        target: &str,
        timeout: Duration,
    ) -> Result<String> {
        let what = format!("squid to log {method} {target}");
        super::process::poll(&what, timeout, || {
            Ok(self.access_log().into_iter().find(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(5) == Some(&method) && f.get(6).is_some_and(|u| u.contains(target))
            }))
        })
        .await
    }
}

/// The uid/gid squid drops to when started as root (`proxy`), or none when
/// it runs as the calling user.
fn proxy_owner() -> Result<Option<(u32, u32)>> {
    // The uid of this process, from /proc (no libc needed).
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .context("no Uid in /proc/self/status")?;
    if uid != "0" {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("proxy:"))
        .context("no user `proxy` (installed by squid-common)")?;
    let f: Vec<&str> = entry.split(':').collect();
    Ok(Some((f[2].parse()?, f[3].parse()?)))
}

/// Gives `path` to the proxy user (when squid drops to it).
fn open_up(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

fn open_up_tree(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    open_up(path, owner)?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            open_up_tree(&e?.path(), owner)?;
        }
    }
    Ok(())
}
