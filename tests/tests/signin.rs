//! Sign-in end to end: the real `gangway` binary signs in through a real
//! OIDC provider (npm `oidc-provider`) with headless Chromium as "the
//! system browser", keeps its tokens in a real Secret Service (GNOME
//! Keyring on a private D-Bus session bus), and carries git through a real
//! `gangway-relay` — refreshing tokens in-band while streams are open.
//!
//! `BROWSER` points at a script that only records the URL it is asked to
//! open; the test then drives Chromium there (login form, consent, the
//! redirect to the agent's loopback listener). Every process a test starts
//! is stopped by the test.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gangway_tests::gangway::{
    bin_path, door_auth, git_helper_env, start_device_login, write_relay_config, CountingBackend,
    IdentitySpec, RelayProcess, ServiceSpec, TestCert,
};
use gangway_tests::peers::browser::Browser;
use gangway_tests::peers::git::{self, GitDaemon, GitHttpServer, RepoFixture};
use gangway_tests::peers::keychain::SecretService;
use gangway_tests::peers::oidc::{OidcProvider, DEFAULT_AUDIENCE};
use gangway_tests::peers::process::{
    assert_failure, assert_success, startup_timeout, Finished, Process,
};
use gangway_tests::world::{BrowserMailbox, DEV};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;

fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

// ---------------------------------------------------------------- helpers

/// A relay with its identity provider, certificate and a keychain for the
/// agent, plus the "system browser" mailbox.
struct Setup {
    keychain: SecretService,
    idp: OidcProvider,
    cert: TestCert,
    relay: RelayProcess,
    dir: TempDir,
    browser: BrowserMailbox,
}

impl Setup {
    /// Everything with a plain-http provider on loopback.
    async fn start(ttl_secs: u64, services: &[ServiceSpec<'_>]) -> Result<Self> {
        Self::start_with(ttl_secs, services, false).await
    }

    /// With `tls_idp`, the provider serves https with the relay's test
    /// certificate (as real providers do; RFC 7009 revocation insists on
    /// https), and the relay gets its keys as a JWKS file (the relay trusts
    /// only public roots for fetching them).
    async fn start_with(
        ttl_secs: u64,
        services: &[ServiceSpec<'_>],
        tls_idp: bool,
    ) -> Result<Self> {
        let keychain = SecretService::start()?;
        let cert = TestCert::new()?;
        let dir = tempfile::tempdir()?;
        let (idp, jwks_file) = if tls_idp {
            let idp = OidcProvider::start_tls(DEFAULT_AUDIENCE, ttl_secs, (&cert.cert, &cert.key))?;
            let client = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&cert.cert)?)?)
                .build()?;
            let jwks = client
                .get(idp.jwks_uri())
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            let path = dir.path().join("jwks.json");
            std::fs::write(&path, jwks)?;
            (idp, Some(path))
        } else {
            (OidcProvider::start(DEFAULT_AUDIENCE, ttl_secs)?, None)
        };
        let config = write_relay_config(
            dir.path(),
            loopback0(),
            &cert,
            &IdentitySpec {
                issuer: idp.issuer(),
                audience: DEFAULT_AUDIENCE,
                leeway_secs: 0,
                jwks_file: jwks_file.as_deref(),
            },
            services,
        )?;
        let relay = RelayProcess::start(&config)?;
        let browser = BrowserMailbox::create(dir.path())?;
        Ok(Setup {
            keychain,
            idp,
            cert,
            relay,
            dir,
            browser,
        })
    }

    /// `gangway SUB --relay URL --ca-file CERT ARGS…` with the test keychain
    /// and browser.
    /// The control socket of the agent `up` starts.
    fn socket(&self) -> std::path::PathBuf {
        self.keychain
            .runtime_dir()
            .join("gangway")
            .join("agent.sock")
    }

    fn gangway(&self, sub: &str, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(bin_path("gangway")?);
        cmd.arg(sub)
            .args(["--relay", &self.relay.url(), "--ca-file"])
            .arg(&self.cert.cert)
            .args(args);
        self.environment(&mut cmd);
        Ok(cmd)
    }

    /// The same command with an environment from the config file instead.
    fn gangway_env(&self, sub: &str, env: &str, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(bin_path("gangway")?);
        cmd.arg(sub).args(["--env", env]).args(args);
        self.environment(&mut cmd);
        Ok(cmd)
    }

    fn environment(&self, cmd: &mut Command) {
        cmd.envs(self.keychain.env())
            .env("TMPDIR", self.tmpdir())
            .env("BROWSER", &self.browser.script)
            .env("RUST_LOG", "info")
            .env_remove("GANGWAY_TOKEN")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
    }

    async fn run(&self, sub: &str, args: &[&str]) -> Result<Finished> {
        Process::spawn_captured(&format!("gangway {sub}"), self.gangway(sub, args)?)?
            .finish(Duration::from_secs(60))
            .await
    }

    /// `gangway login` through `browser` as `user`; returns the command's
    /// result and the page the browser ended on.
    async fn browser_login(
        &mut self,
        browser: &Browser,
        user: &str,
        password: &str,
    ) -> Result<(Finished, String)> {
        let login = Process::spawn_captured(
            "gangway login",
            self.gangway("login", &["--timeout", "90"])?,
        )?;
        let url = self.browser.next_url(Duration::from_secs(20)).await?;
        let page = browser.sign_in(&url, user, password).await?;
        let done = login.finish(Duration::from_secs(60)).await?;
        Ok((done, page.text))
    }

    /// Starts `gangway up` (tokens from the keychain) listening for
    /// `services` on port-0 addresses.
    async fn up(&self, services: &[&str], rust_log: &str) -> Result<(Process, Vec<SocketAddr>)> {
        let mut args = Vec::new();
        for s in services {
            args.push("--listen".to_string());
            args.push(format!("{s}=127.0.0.1:0"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.gangway("up", &args)?;
        cmd.env("RUST_LOG", rust_log);
        let mut up = Process::spawn_captured("gangway up", cmd)?;
        let mut addrs = Vec::new();
        for s in services {
            let line = up
                .wait_line(
                    &format!("listener for {s}"),
                    startup_timeout(Duration::from_secs(30)),
                    |l| {
                        let mut w = l.split_whitespace();
                        w.next() == Some("listening") && w.next() == Some(s)
                    },
                )
                .await?;
            addrs.push(
                line.split_whitespace()
                    .nth(2)
                    .and_then(|a| a.parse().ok())
                    .with_context(|| format!("no address in {line:?}"))?,
            );
        }
        Ok((up, addrs))
    }

    /// The `TMPDIR` Gangway's processes get (their own, so a test can look
    /// at what they left there).
    fn tmpdir(&self) -> PathBuf {
        let dir = self.dir.path().join("tmp");
        std::fs::create_dir_all(&dir).expect("TMPDIR for gangway");
        dir
    }

    /// The refresh and access token stored for this relay, read from the
    /// keychain with `secret-tool` (not through Gangway). The access entry
    /// is a JSON record with the token in `token`.
    fn stored_tokens(&self) -> Result<(Option<String>, Option<String>)> {
        let ns = gangway_agent::keychain::namespace_for(&url::Url::parse(&self.relay.url())?);
        let access = match self.keychain.gangway_value(&ns, "access")? {
            Some(record) => {
                let v: serde_json::Value = serde_json::from_str(&record)
                    .context("the access entry is not the agent's JSON record")?;
                Some(
                    v["token"]
                        .as_str()
                        .context("no token in the access entry")?
                        .to_string(),
                )
            }
            None => None,
        };
        Ok((self.keychain.gangway_value(&ns, "refresh")?, access))
    }

    /// Writes a user config with one environment `name` for this relay.
    fn write_config(&self, name: &str) -> Result<()> {
        let dir = self.keychain.home().join(".config/gangway");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "default_environment = {name:?}\n\n[[environment]]\nname = {name:?}\nrelay = {:?}\nca_file = {:?}\n",
                self.relay.url(),
                self.cert.cert.to_str().unwrap()
            ),
        )?;
        Ok(())
    }

    /// As an administrator: end every grant `account` has at the provider.
    async fn revoke_at_provider(&self, account: &str) -> Result<u64> {
        let v: serde_json::Value = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
                &self.cert.cert,
            )?)?)
            .build()?
            .post(format!(
                "{}/admin/revoke-grants?account={account}",
                self.idp.issuer()
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        v["revoked"].as_u64().context("revoked count")
    }
}

/// Every file under `dir` that contains `needle` (the keyring's own
/// encrypted file cannot, by construction).
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .map(|b| String::from_utf8_lossy(&b).contains(needle))
                .unwrap_or(false)
            {
                hits.push(p);
            }
        }
    }
    hits
}

// ------------------------------------------------------------------ tests

/// Browser sign-in (authorization code + PKCE, loopback redirect) as
/// alice, then `gangway up` from the keychain and a git clone through the
/// tunnel; again after restarting the agent *and* the keyring daemon (no
/// second login); then logout revokes and deletes, and `up` says so.
#[tokio::test(flavor = "multi_thread")]
async fn browser_login_then_up_clones_survives_restarts_and_logout() -> Result<()> {
    let repos = RepoFixture::create("demo")?;
    let daemon = GitDaemon::start(repos.root())?;
    let mut s = Setup::start_with(
        60,
        &[ServiceSpec {
            name: "git",
            kind: "tcp",
            backends: vec![daemon.addr().to_string()],
            allow_groups: Some(DEV),
        }],
        true,
    )
    .await?;
    assert!(s.idp.issuer().starts_with("https://"));
    s.write_config("test")?;
    let browser = Browser::start().await?;

    // Login, with the environment from the config file.
    let login = Process::spawn_captured(
        "gangway login",
        s.gangway_env("login", "test", &["--timeout", "90"])?,
    )?;
    let url = s.browser.next_url(Duration::from_secs(20)).await?;
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    assert!(url.contains("prompt=consent"), "{url}");
    assert!(url.contains("offline_access"), "{url}");
    assert!(
        url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{url}"
    );
    let page = browser.sign_in(&url, "alice", "alice-pw").await?;
    assert_eq!(page.selector, "#gangway-result", "{page:?}");
    assert!(
        page.text.contains("You are signed in to Gangway as alice"),
        "{page:?}"
    );
    let done = login.finish(Duration::from_secs(30)).await?;
    assert_success("login", &done);
    assert!(
        done.stdout
            .contains(&format!("Signed in to test ({}) as alice", s.relay.url())),
        "{}",
        done.stdout
    );
    // The URL was printed too, for when no browser opens.
    assert!(done.stderr.contains(&url), "{}", done.stderr);

    let status = Process::spawn_captured("gangway status", s.gangway_env("status", "test", &[])?)?
        .finish(Duration::from_secs(20))
        .await?;
    assert_success("status", &status);
    assert!(
        status.stdout.contains("Signed in as alice"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("Refresh token: stored"),
        "{}",
        status.stdout
    );
    // What the keychain holds right after login.
    let first_tokens: Vec<String> = {
        let (r, a) = s.stored_tokens()?;
        r.into_iter().chain(a).collect()
    };
    assert_eq!(first_tokens.len(), 2, "login stored no tokens");

    // `up` with nothing but the keychain; a clone through the tunnel.
    let work = tempfile::tempdir()?;
    let (up, addrs) = s.up(&["git"], "info").await?;
    let url = format!("git://{}/demo.git", addrs[0]);
    git::git(work.path(), &["clone", "--quiet", &url, "first"])?;
    let up_logs = [up.stdout(), up.stderr()].concat().join("\n");
    drop(up);

    // Restart the keyring daemon and the agent: still signed in.
    s.keychain.restart_keyring()?;
    let (up, addrs) = s.up(&["git"], "info").await?;
    let url = format!("git://{}/demo.git", addrs[0]);
    git::git(work.path(), &["clone", "--quiet", &url, "second"])?;
    assert_eq!(
        git::git(&work.path().join("second"), &["rev-parse", "HEAD"])?.trim(),
        repos.head_commit("demo")?
    );
    let up_logs = format!(
        "{up_logs}\n{}",
        [up.stdout(), up.stderr()].concat().join("\n")
    );
    drop(up);
    let sessions: Vec<_> = s
        .relay
        .audit()
        .into_iter()
        .filter(|e| e["event"] == "session_open")
        .collect();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(sessions.iter().all(|e| e["subject"] == "alice"));

    // Nothing secret in any output, log or plain file: both tokens, as
    // the keychain holds them (and as it held them right after login),
    // are searched for in $HOME, the runtime directory, TMPDIR, every
    // output of Gangway's processes, the relay's log and its audit file.
    let (refresh, access) = s.stored_tokens()?;
    let refresh = refresh.context("no refresh token in the keychain")?;
    let access = access.context("no access token in the keychain")?;
    assert!(
        access.starts_with("eyJ"),
        "not a JWT: {} chars",
        access.len()
    );
    let mut secrets = vec![refresh.clone(), access.clone()];
    secrets.extend(first_tokens);
    secrets.sort();
    secrets.dedup();
    let logs = format!(
        "{}\n{}\n{}\n{}\n{}",
        up_logs,
        done.stdout,
        done.stderr,
        status.stdout,
        s.relay.process.output()
    );
    let audit = std::fs::read_to_string(s.relay.audit_path())?;
    assert!(audit.contains("session_open"), "empty audit file");
    let places = [s.keychain.home(), s.keychain.runtime_dir(), s.tmpdir()];
    for secret in &secrets {
        // The part that makes it unique: a JWT's signature, or all of it.
        let needle = &secret[secret.len().saturating_sub(40)..];
        assert!(!logs.contains(needle), "a token is in the logs");
        assert!(!audit.contains(needle), "a token is in the audit file");
        for dir in &places {
            let hits = files_containing(dir, needle);
            assert!(hits.is_empty(), "a token was written to {hits:?}");
        }
    }

    // Logout: revoked at the provider, deleted from the keychain.
    let out = Process::spawn_captured("gangway logout", s.gangway_env("logout", "test", &[])?)?
        .finish(Duration::from_secs(30))
        .await?;
    assert_success("logout", &out);
    assert!(
        out.stdout
            .contains("Refresh token revoked at the identity provider"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("tokens deleted"), "{}", out.stdout);
    // The provider itself refuses the old refresh token now, and the
    // keychain holds nothing for this relay.
    let (code, answer) = s.idp.refresh_grant(&refresh).await?;
    assert_eq!(
        (code, &answer["error"]),
        (400, &"invalid_grant".into()),
        "{answer}"
    );
    assert_eq!(s.stored_tokens()?, (None, None));
    let status = Process::spawn_captured("gangway status", s.gangway_env("status", "test", &[])?)?
        .finish(Duration::from_secs(20))
        .await?;
    assert_failure("status after logout", &status);
    assert!(
        status
            .stdout
            .contains("Not signed in. Run: gangway login --env test"),
        "{}",
        status.stdout
    );
    let up = s.run("up", &["--listen", "git=127.0.0.1:0"]).await?;
    assert_failure("up after logout", &up);
    assert!(
        up.stderr.contains("sign-in needed: not signed in to"),
        "{}",
        up.stderr
    );
    assert!(up.stderr.contains("gangway login --relay"), "{}", up.stderr);
    drop(browser);
    drop(s.dir);
    Ok(())
}

/// Device flow approved in the browser by bob (readers): the catalog shows
/// only what readers may use, and a forbidden service is refused with its
/// reason (and never reaches its backend).
#[tokio::test(flavor = "multi_thread")]
async fn device_flow_reader_sees_less_and_is_refused_with_reason() -> Result<()> {
    use gangway_agent::session::Session;
    use gangway_agent::AgentError;
    use gangway_wire::{RefusalCode, Token};

    let bitbucket = CountingBackend::start()?;
    let confluence = CountingBackend::start()?;
    let s = Setup::start(
        60,
        &[
            ServiceSpec {
                name: "bitbucket",
                kind: "http",
                backends: vec![bitbucket.addr.to_string()],
                allow_groups: Some(DEV),
            },
            ServiceSpec {
                name: "confluence",
                kind: "http",
                backends: vec![confluence.addr.to_string()],
                allow_groups: Some(&["developers", "readers"]),
            },
        ],
    )
    .await?;
    let browser = Browser::start().await?;

    let (mut login, url) = start_device_login(s.gangway("login", &["--device"])?).await?;
    let code = login
        .wait_line("the user code", Duration::from_secs(5), |l| {
            l.contains("shows the code:")
        })
        .await?;
    let code = code.rsplit(": ").next().unwrap_or_default().to_string();
    ensure!(!code.is_empty(), "no user code printed");
    let page = browser.sign_in(&url, "bob", "bob-pw").await?;
    assert_eq!(page.selector, "#success", "{page:?}");
    let done = login.finish(Duration::from_secs(60)).await?;
    assert_success("login --device", &done);
    assert!(
        done.stdout.contains("as bob — 1 service(s) available"),
        "{}",
        done.stdout
    );

    // `up` serves only what bob may use.
    let (mut up, addrs) = s.up(&["confluence"], "info").await?;
    // `up` prints how many services it serves, then one line each.
    let header = up
        .wait_line("the list of services", Duration::from_secs(5), |l| {
            l.starts_with("Signed in to ") && l.ends_with(" service(s):")
        })
        .await?;
    assert!(header.contains("as bob — 1 service(s):"), "{header}");
    let listening: Vec<_> = up
        .stdout()
        .into_iter()
        .filter(|l| l.trim_start().starts_with("listening"))
        .collect();
    assert_eq!(listening.len(), 1, "{listening:?}");
    assert!(listening[0].contains("confluence"));
    assert!(addrs[0].port() != 0);
    assert!(up.alive());

    // A stream to bitbucket, with bob's own token (bound to the device's
    // key, which goes with it): refused with the reason.
    let token = s.run("token", &[]).await?;
    assert_success("token", &token);
    let egress =
        gangway_agent::net::Egress::direct(gangway_agent::tls::client_config(Some(&s.cert.cert))?);
    let relay = url::Url::parse(&s.relay.url())?;
    let ns = gangway_agent::keychain::namespace_for(&relay);
    let key = match s.keychain.gangway_value(&ns, "dpop-key")? {
        Some(k) => Some(std::sync::Arc::new(gangway_dpop::ProofKey::from_pkcs8_b64(
            &k,
        )?)),
        None => None,
    };
    let session =
        Session::connect_with(&relay, &egress, &Token::new(token.stdout.trim()), key).await?;
    match session.open("bitbucket").await {
        Err(AgentError::Refused(r)) => {
            assert_eq!(r.code, RefusalCode::Forbidden);
            assert!(r.message.contains("bob may not use bitbucket"), "{r}");
        }
        Err(e) => panic!("expected a forbidden refusal, got {e}"),
        Ok(_) => panic!("expected a forbidden refusal, got a stream"),
    }
    // A barrier: a request bob may make reaches confluence's backend
    // through the same relay; by then nothing reached bitbucket's.
    let auth = door_auth(&s.socket(), addrs[0])?;
    let _ = reqwest::Client::new()
        .get(format!("http://{}/", addrs[0]))
        .header("authorization", auth)
        .send()
        .await;
    confluence
        .wait_for_connections(1, Duration::from_secs(20))
        .await?;
    assert_eq!(bitbucket.connections(), 0);
    assert!(s
        .relay
        .audit()
        .iter()
        .any(|e| e["event"] == "stream_refused"
            && e["code"] == "forbidden"
            && e["subject"] == "bob"));
    drop(up);
    Ok(())
}

/// Byte `k` of the slow backend's stream.
fn pattern(k: u64) -> u8 {
    (k.wrapping_mul(7) ^ (k / 251)) as u8
}

/// A transfer through a tcp service, paced at 20 kB/s, while access tokens
/// live 20 s and the relay allows no leeway. It lasts at least 45 s and
/// until the relay has accepted three in-band refreshes (about 50 s): the
/// session and the stream are never cut, and every byte arrives. (A
/// refresh is due at 75-85% of a token's life, so 3 s or more before it
/// expires: room for a busy machine.)
#[tokio::test(flavor = "multi_thread")]
async fn long_transfer_survives_token_rotations() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const TTL_SECS: u64 = 20;
    const MIN_TRANSFER: Duration = Duration::from_secs(45);
    const REFRESHES: usize = 3;
    /// The transfer stops here even if the refreshes did not all happen.
    const MAX_CHUNKS: u64 = 1500;
    const CHUNK: u64 = 2000;
    const EVERY: Duration = Duration::from_millis(100);
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let backend_addr = backend.local_addr()?;
    let enough = Arc::new(AtomicBool::new(false));
    let source = tokio::spawn({
        let enough = enough.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let (mut tcp, _) = backend.accept().await?;
            let mut k = 0u64;
            while k < MAX_CHUNKS * CHUNK && !enough.load(Ordering::SeqCst) {
                let chunk: Vec<u8> = (k..k + CHUNK).map(pattern).collect();
                tcp.write_all(&chunk).await?;
                k += CHUNK;
                tokio::time::sleep(EVERY).await;
            }
            tcp.shutdown().await?;
            anyhow::Ok(k)
        }
    });

    let mut s = Setup::start(
        TTL_SECS,
        &[ServiceSpec {
            name: "slow",
            kind: "tcp",
            backends: vec![backend_addr.to_string()],
            allow_groups: Some(DEV),
        }],
    )
    .await?;
    let browser = Browser::start().await?;
    let (done, _) = s.browser_login(&browser, "alice", "alice-pw").await?;
    assert_success("login", &done);
    drop(browser);

    let (up, addrs) = s.up(&["slow"], "info,gangway_agent::session=debug").await?;
    let accepted = |up: &Process| {
        up.stderr()
            .iter()
            .filter(|l| l.contains("relay accepted the refreshed token"))
            .count()
    };
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addrs[0]).await?;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut mismatches = 0u64;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
            .await
            .context("the stream stalled")??;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != pattern(got + i as u64) {
                mismatches += 1;
            }
        }
        got += n as u64;
        if started.elapsed() >= MIN_TRANSFER && accepted(&up) >= REFRESHES {
            enough.store(true, Ordering::SeqCst);
        }
    }
    let took = started.elapsed();
    // Our side is done too: the relay closes the stream (and audits it).
    drop(tcp);
    let sent = source.await??;
    assert_eq!(got, sent, "bytes received");
    assert_eq!(mismatches, 0);
    assert!(took >= MIN_TRANSFER, "{took:?}");

    // The stream's audit line lands when it closes.
    let audit = s
        .relay
        .wait_audit("stream_close", Duration::from_secs(10), |e| {
            e["event"] == "stream_close"
        })
        .await?;
    let logs = up.stderr();
    let accepted = accepted(&up);
    drop(up);
    let sent_in_band = logs
        .iter()
        .filter(|l| l.contains("access token refreshed; sent to the relay in-band"))
        .count();
    eprintln!(
        "long transfer: {got} bytes in {took:?}; {sent_in_band} refreshes sent, {accepted} accepted by the relay"
    );
    assert!(sent_in_band >= REFRESHES, "refreshes sent: {sent_in_band}");
    assert!(accepted >= REFRESHES, "refreshes accepted: {accepted}");
    assert!(!logs
        .iter()
        .any(|l| l.contains("rejected the refreshed token")));
    let count = |ev: &str| audit.iter().filter(|e| e["event"] == ev).count();
    assert_eq!(count("session_open"), 1, "{audit:?}");
    assert_eq!(count("token_refresh_refused"), 0, "{audit:?}");
    assert!(
        !audit
            .iter()
            .any(|e| e["event"] == "session_close" && e["reason"] == "token expired"),
        "{audit:?}"
    );
    let close = audit
        .iter()
        .find(|e| e["event"] == "stream_close" && e["service"] == "slow")
        .context("no stream_close audit line")?;
    assert_eq!(close["bytes_down"], got, "{close}");
    assert_eq!(close["subject"], "alice");
    assert!(close.get("reason").is_none_or(|r| r.is_null()), "{close}");
    Ok(())
}

/// The provider revokes alice's grant while `up` runs: the next refresh
/// fails for good, the agent (still running) answers new connections with
/// "sign-in needed", `gangway status` says so at once, and a new
/// `gangway login` elsewhere brings the running agent back.
#[tokio::test(flavor = "multi_thread")]
async fn revoked_sign_in_becomes_sign_in_needed_and_login_resumes() -> Result<()> {
    let repos = RepoFixture::create("demo")?;
    let http = GitHttpServer::start(repos.root())?;
    let mut s = Setup::start(
        10,
        &[ServiceSpec {
            name: "bitbucket",
            kind: "http",
            backends: vec![http.addr().to_string()],
            allow_groups: Some(DEV),
        }],
    )
    .await?;
    let browser = Browser::start().await?;
    let (done, _) = s.browser_login(&browser, "alice", "alice-pw").await?;
    assert_success("login", &done);
    let (mut up, addrs) = s.up(&["bitbucket"], "info").await?;
    up.wait_line("tunnel connected", Duration::from_secs(20), |l| {
        l.contains("tunnel connected")
    })
    .await?;
    let repo_url = format!("http://{}/scm/demo.git", addrs[0]);
    let work = tempfile::tempdir()?;
    let env = git_helper_env(&s.socket())?;
    git::git_with(work.path(), &["ls-remote", &repo_url], &env)?;
    let auth = door_auth(&s.socket(), addrs[0])?;
    let http = reqwest::Client::new();

    assert!(s.revoke_at_provider("alice").await? >= 1);
    up.wait_line("sign-in needed", Duration::from_secs(30), |l| {
        l.contains("sign-in needed")
    })
    .await?;

    // New connections get the reason at once; no hang.
    let t = Instant::now();
    let resp = http
        .get(format!("{repo_url}/info/refs?service=git-upload-pack"))
        .header("authorization", &auth)
        .send()
        .await?;
    assert_eq!(resp.status(), 403);
    let body = resp.text().await?;
    assert!(body.contains("sign-in needed"), "{body}");
    assert!(body.contains("gangway login"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    let status = s.run("status", &[]).await?;
    assert_failure("status", &status);
    assert!(
        status.stdout.contains("Sign-in needed:"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("invalid_grant"), "{}", status.stdout);
    assert!(status.took < Duration::from_secs(10), "{:?}", status.took);

    // The relay ends the session when the last token expires; the agent
    // stays up and keeps answering with the reason.
    s.relay
        .wait_audit("session_close", Duration::from_secs(30), |e| {
            e["event"] == "session_close"
        })
        .await?;
    // The agent sees its session end, and stays.
    up.wait_line("the end of the session", Duration::from_secs(20), |l| {
        l.contains("; reconnecting")
            && (l.contains("relay closed the session") || l.contains("connection lost"))
    })
    .await?;
    assert!(up.alive(), "the agent exited");
    let resp = http
        .get(format!("{repo_url}/info/refs?service=git-upload-pack"))
        .header("authorization", &auth)
        .send()
        .await?;
    assert_eq!(resp.status(), 403);

    // Signing in again (another terminal) brings the running agent back.
    let (done, _) = s.browser_login(&browser, "alice", "alice-pw").await?;
    assert_success("second login", &done);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match git::git_with(work.path(), &["ls-remote", &repo_url], &env) {
            Ok(out) if out.contains("refs/heads/main") => break,
            other => {
                ensure!(
                    Instant::now() < deadline,
                    "the agent did not pick up the new sign-in: {other:?}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    assert!(up.alive());
    drop(up);
    Ok(())
}

/// A wrong password shows the provider's error; cancelling then ends the
/// login with a clear "denied" and a non-zero exit. Nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_then_cancel_is_a_clear_denial() -> Result<()> {
    let mut s = Setup::start(60, &[]).await?;
    let browser = Browser::start().await?;
    let login =
        Process::spawn_captured("gangway login", s.gangway("login", &["--timeout", "60"])?)?;
    let url = s.browser.next_url(Duration::from_secs(20)).await?;
    browser.goto(&url).await?;
    browser
        .wait_for_any(&["#username"], Duration::from_secs(15))
        .await?;
    browser.fill_login("alice", "not-her-password").await?;
    let page = browser
        .wait_for_any(&["#error"], Duration::from_secs(15))
        .await?;
    assert!(
        page.text.contains("Invalid username or password"),
        "{page:?}"
    );
    browser.click("#cancel").await?;
    let page = browser
        .wait_for_any(&["#gangway-result"], Duration::from_secs(15))
        .await?;
    assert!(page.text.contains("denied"), "{page:?}");
    let done = login.finish(Duration::from_secs(30)).await?;
    assert_failure("login", &done);
    assert!(
        done.stderr
            .contains("sign-in was denied at the identity provider: access_denied"),
        "{}",
        done.stderr
    );
    let status = s.run("status", &[]).await?;
    assert!(status.stdout.contains("Not signed in"), "{}", status.stdout);
    Ok(())
}

/// A redirect whose `state` is not the one this login sent is refused,
/// even though the user signed in and the code is genuine.
#[tokio::test(flavor = "multi_thread")]
async fn state_mismatch_is_refused() -> Result<()> {
    let mut s = Setup::start(60, &[]).await?;
    let browser = Browser::start().await?;
    let login =
        Process::spawn_captured("gangway login", s.gangway("login", &["--timeout", "60"])?)?;
    let url = s.browser.next_url(Duration::from_secs(20)).await?;
    let mut forged = url::Url::parse(&url)?;
    let pairs: Vec<(String, String)> = forged
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                "forged-state".to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let page = browser
        .sign_in(forged.as_str(), "alice", "alice-pw")
        .await?;
    assert_eq!(page.selector, "#gangway-result", "{page:?}");
    assert!(page.text.contains("state mismatch"), "{page:?}");
    let done = login.finish(Duration::from_secs(30)).await?;
    assert_failure("login", &done);
    assert!(done.stderr.contains("state mismatch"), "{}", done.stderr);
    let status = s.run("status", &[]).await?;
    assert!(status.stdout.contains("Not signed in"), "{}", status.stdout);
    Ok(())
}

/// Nobody finishes the sign-in (the browser was closed): the login gives
/// up after `--timeout` with a clear message.
#[tokio::test(flavor = "multi_thread")]
async fn closed_browser_times_out_clearly() -> Result<()> {
    let mut s = Setup::start(60, &[]).await?;
    let login = Process::spawn_captured("gangway login", s.gangway("login", &["--timeout", "3"])?)?;
    s.browser.next_url(Duration::from_secs(20)).await?;
    let done = login.finish(Duration::from_secs(30)).await?;
    assert_failure("login", &done);
    assert!(
        done.stderr
            .contains("no sign-in completed in the browser within 3 s"),
        "{}",
        done.stderr
    );
    assert!(done.took < Duration::from_secs(15), "{:?}", done.took);
    Ok(())
}

/// The identity provider is down: a clear message naming it, non-zero.
#[tokio::test(flavor = "multi_thread")]
async fn provider_down_is_a_clear_error() -> Result<()> {
    let s = Setup::start(60, &[]).await?;
    let issuer = s.idp.issuer().to_string();
    let Setup {
        idp,
        relay,
        cert,
        keychain,
        dir,
        ..
    } = s;
    drop(idp);
    let mut cmd = Command::new(bin_path("gangway")?);
    cmd.args(["login", "--relay", &relay.url(), "--ca-file"])
        .arg(&cert.cert)
        .envs(keychain.env())
        .env("BROWSER", "/bin/false")
        .env_remove("GANGWAY_TOKEN");
    let done = Process::spawn_captured("gangway login", cmd)?
        .finish(Duration::from_secs(60))
        .await?;
    assert_failure("login", &done);
    assert!(
        done.stderr
            .contains(&format!("identity provider {issuer} is unreachable")),
        "{}",
        done.stderr
    );
    drop(dir);
    Ok(())
}

/// No keychain at all (no session bus): login and up fail at once with a
/// message that says what is missing, and nothing is written to disk.
#[tokio::test(flavor = "multi_thread")]
async fn no_keychain_is_a_clear_error_and_nothing_is_written() -> Result<()> {
    let s = Setup::start(60, &[]).await?;
    let root = tempfile::tempdir()?;
    let env: Vec<(&str, OsString)> = SecretService::absent_env(root.path())?;
    for sub in ["login", "up"] {
        let mut cmd = Command::new(bin_path("gangway")?);
        cmd.args([sub, "--relay", &s.relay.url(), "--ca-file"])
            .arg(&s.cert.cert)
            .envs(env.clone())
            .env("BROWSER", &s.browser.script)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("GANGWAY_TOKEN");
        let done = Process::spawn_captured(&format!("gangway {sub}"), cmd)?
            .finish(Duration::from_secs(30))
            .await?;
        assert_failure(sub, &done);
        assert!(
            done.stderr.contains("cannot use the OS keychain")
                && done.stderr.contains("D-Bus session bus is not reachable"),
            "{}",
            done.stderr
        );
        assert!(
            done.stderr.contains("GANGWAY_TOKEN"),
            "the message should name the alternative: {}",
            done.stderr
        );
    }
    // Checked before any sign-in: no browser was opened, no file written.
    assert!(!s.browser.opened_any(), "a browser was opened");
    let mut written = Vec::new();
    for e in walk(root.path()) {
        if e.is_file() {
            written.push(e);
        }
    }
    assert!(written.is_empty(), "files written: {written:?}");
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
