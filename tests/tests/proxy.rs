//! Behind a corporate HTTP proxy (real squid): every connection of the
//! agent — the relay's API, the identity provider, the tunnel's WebSocket —
//! goes through it, with Basic proxy authentication, `NO_PROXY` honoured,
//! and each failure said in plain words; a TLS-inspecting squid (ssl-bump)
//! works once its CA is trusted, and is named when it is not.
//!
//! The relay and the provider are addressed as `relay.corp.test` and
//! `idp.corp.test`, names only squid resolves (its hosts file maps them to
//! 127.0.0.1): the agent cannot reach them any other way, and loopback
//! literals would never be proxied.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Result};
use gangway_agent::net::{Egress, ExplicitProxy, ProxySetting};
use gangway_tests::gangway::{
    gangway_command, write_relay_config, AgentProcess, IdentitySpec, RelayProcess, ServiceSpec,
    TestCert,
};
use gangway_tests::peers::browser::Browser;
use gangway_tests::peers::desktop::HttpStub;
use gangway_tests::peers::git::{self, GitDaemon, RepoFixture};
use gangway_tests::peers::keychain::SecretService;
use gangway_tests::peers::oidc::{OidcProvider, CI_DEV, DEFAULT_AUDIENCE};
use gangway_tests::peers::process::{assert_failure, assert_success, Process};
use gangway_tests::peers::squid::{Bump, Squid, SquidOptions};

const RELAY_HOST: &str = "relay.corp.test";
const IDP_HOST: &str = "idp.corp.test";
const PROXY_USER: (&str, &str) = ("alice", "proxy-pw");

/// The company: a relay and its identity provider, known by names only the
/// proxy resolves; a git daemon and a Confluence stand-in behind the relay.
struct Corp {
    keychain: SecretService,
    cert: TestCert,
    idp: OidcProvider,
    relay: RelayProcess,
    _git: GitDaemon,
    repos: RepoFixture,
    _web: HttpStub,
    dir: tempfile::TempDir,
}

impl Corp {
    async fn start() -> Result<Self> {
        let keychain = SecretService::start()?;
        let cert = TestCert::from_params(rcgen::CertificateParams::new(vec![
            RELAY_HOST.to_string(),
            IDP_HOST.to_string(),
        ])?)?;
        let dir = tempfile::tempdir()?;
        let idp = OidcProvider::start_tls_with_settings(
            DEFAULT_AUDIENCE,
            60,
            (&cert.cert, &cert.key),
            &[("ISSUER_HOST", IDP_HOST)],
        )?;
        ensure!(idp.issuer().starts_with(&format!("https://{IDP_HOST}:")));
        // The relay is given the provider's keys as a file: it has no
        // proxy of its own here, and cannot resolve the provider's name.
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, idp.jwks().await?)?;
        let repos = RepoFixture::create("demo")?;
        let git = GitDaemon::start(repos.root())?;
        let web = HttpStub::start(
            "<!doctype html><title>Confluence</title><h1 id=\"space\">Engineering space</h1>",
        )?;
        let config = write_relay_config(
            dir.path(),
            "127.0.0.1:0".parse()?,
            &cert,
            &IdentitySpec {
                issuer: idp.issuer(),
                audience: DEFAULT_AUDIENCE,
                leeway_secs: 0,
                jwks_file: Some(&jwks),
            },
            &[
                ServiceSpec {
                    name: "git",
                    kind: "tcp",
                    backends: vec![git.addr().to_string()],
                    allow_groups: None,
                },
                ServiceSpec {
                    name: "confluence",
                    kind: "http",
                    backends: vec![web.addr.to_string()],
                    allow_groups: None,
                },
            ],
        )?;
        let relay = RelayProcess::start(&config)?;
        Ok(Corp {
            keychain,
            cert,
            idp,
            relay,
            _git: git,
            repos,
            _web: web,
            dir,
        })
    }

    fn relay_url(&self) -> String {
        format!("https://{RELAY_HOST}:{}", self.relay.addr.port())
    }

    fn idp_port(&self) -> u16 {
        url::Url::parse(self.idp.issuer())
            .ok()
            .and_then(|u| u.port())
            .expect("issuer port")
    }

    /// Squid that knows the company's names and lets CONNECT reach their
    /// ports.
    fn squid(&self, users: &[(&str, &str)], bump: Option<Bump<'_>>) -> Result<Squid> {
        Squid::start(&SquidOptions {
            hosts: &[RELAY_HOST, IDP_HOST],
            connect_ports: vec![self.relay.addr.port(), self.idp_port()],
            users,
            bump,
        })
    }

    /// The user's config: one environment `corp`, with `extra` lines (e.g.
    /// its `proxy`) and `ca_file` unless `ca` is `None`.
    fn write_config(&self, extra: &str, ca: Option<&Path>) -> Result<PathBuf> {
        let dir = self.keychain.home().join(".config/gangway");
        std::fs::create_dir_all(&dir)?;
        let mut t = format!(
            "default_environment = \"corp\"\n[[environment]]\nname = \"corp\"\nrelay = {:?}\n",
            self.relay_url()
        );
        if let Some(ca) = ca {
            t += &format!("ca_file = {:?}\n", ca.to_str().unwrap());
        }
        t += extra;
        let path = dir.join("config.toml");
        std::fs::write(&path, t)?;
        Ok(path)
    }

    /// `gangway ARGS…` with the keychain and `env` (no proxy variable of
    /// the caller's).
    fn gangway(&self, args: &[&str], env: &[(&str, OsString)]) -> Result<std::process::Command> {
        let mut cmd = gangway_command(args)?;
        for v in gangway_agent::net::proxy::VARIABLES {
            cmd.env_remove(v);
        }
        cmd.envs(self.keychain.env())
            .envs(env.iter().map(|(k, v)| (k, v)));
        Ok(cmd)
    }

    /// `gangway doctor --json --env corp`: the run and its report.
    async fn doctor(
        &self,
        env: &[(&str, OsString)],
    ) -> Result<(gangway_tests::peers::process::Finished, serde_json::Value)> {
        let mut cmd = self.gangway(&["doctor", "--json", "--env", "corp"], env)?;
        cmd.env("GANGWAY_CONTROL_SOCKET", self.dir.path().join("none.sock"));
        let done = Process::spawn_captured("gangway doctor", cmd)?
            .finish(Duration::from_secs(120))
            .await?;
        let report = serde_json::from_str(&done.stdout).map_err(|e| {
            anyhow::anyhow!("doctor's JSON ({e}): {}\n{}", done.stdout, done.stderr)
        })?;
        Ok((done, report))
    }

    async fn run(
        &self,
        args: &[&str],
        env: &[(&str, OsString)],
    ) -> Result<gangway_tests::peers::process::Finished> {
        Process::spawn_captured(&format!("gangway {}", args[0]), self.gangway(args, env)?)?
            .finish(Duration::from_secs(60))
            .await
    }
}

fn var(k: &'static str, v: impl Into<OsString>) -> (&'static str, OsString) {
    (k, v.into())
}

/// A browser that reaches the company's names directly (it is not the
/// agent: the user's browser may well have its own way there).
async fn corp_browser() -> Result<Browser> {
    Browser::start_with_args(&[format!(
        "--host-resolver-rules=MAP {RELAY_HOST} 127.0.0.1, MAP {IDP_HOST} 127.0.0.1"
    )])
    .await
}

/// Sign-in (device flow: every token request through squid), `gangway up`,
/// a git clone and a Confluence page — all through an authenticating squid
/// set by `HTTPS_PROXY`, each connection in squid's access log as alice.
#[tokio::test(flavor = "multi_thread")]
async fn behind_an_authenticating_squid_sign_in_clone_and_browse_work() -> Result<()> {
    let corp = Corp::start().await?;
    let squid = corp.squid(&[PROXY_USER], None)?;
    corp.write_config("", Some(&corp.cert.cert))?;
    let env = [var("HTTPS_PROXY", squid.url(Some(PROXY_USER)))];

    // Sign in with the device flow: discovery, the device authorization
    // and the token polls all go through the proxy.
    let browser = corp_browser().await?;
    let mut login = Process::spawn_captured(
        "gangway login --device",
        corp.gangway(&["login", "--device", "--env", "corp"], &env)?,
    )?;
    let url = login
        .wait_line("the verification URL", Duration::from_secs(20), |l| {
            l.trim_start().starts_with(&format!("https://{IDP_HOST}:"))
        })
        .await?
        .trim()
        .to_string();
    login
        .wait_line("the user code", Duration::from_secs(10), |l| {
            l.contains("shows the code:")
        })
        .await?;
    ensure!(url.contains(IDP_HOST), "{url}");
    let page = browser.sign_in(&url, "alice", "alice-pw").await?;
    assert_eq!(page.selector, "#success", "{page:?}");
    let done = login.finish(Duration::from_secs(60)).await?;
    assert_success("login --device", &done);
    assert!(!done.stdout.contains(PROXY_USER.1) && !done.stderr.contains(PROXY_USER.1));
    let relay_target = format!("{RELAY_HOST}:{}", corp.relay.addr.port());
    let idp_target = format!("{IDP_HOST}:{}", corp.idp_port());
    for target in [&relay_target, &idp_target] {
        let line = squid
            .wait_logged("CONNECT", target, Duration::from_secs(10))
            .await?;
        assert!(line.contains(" alice "), "not as alice: {line}");
    }

    // `gangway up` (tokens from the keychain): catalog and tunnel through
    // the proxy; then a clone over git:// and a Confluence page.
    let mut cmd = corp.gangway(
        &[
            "up",
            "--env",
            "corp",
            "--listen",
            "git=127.0.0.1:0",
            "--listen",
            "confluence=127.0.0.1:0",
        ],
        &env,
    )?;
    cmd.env("GANGWAY_CONTROL_SOCKET", corp.dir.path().join("agent.sock"));
    let agent = AgentProcess::spawn(cmd, &["git", "confluence"])?;
    let work = tempfile::tempdir()?;
    let url = format!("git://{}/demo.git", agent.addr("git"));
    let work_path = work.path().to_path_buf();
    tokio::task::spawn_blocking(move || git::git(&work_path, &["clone", "--quiet", &url, "demo"]))
        .await??;
    let head = git::git(&work.path().join("demo"), &["rev-parse", "HEAD"])?;
    assert_eq!(head.trim(), corp.repos.head_commit("demo")?.trim());
    let page = agent
        .http("confluence")?
        .get(format!("http://{}/", agent.addr("confluence")))
        .send()
        .await?
        .text()
        .await?;
    assert!(page.contains("Engineering space"), "{page}");
    // The tunnel is one more CONNECT to the relay (beside the catalog's),
    // logged when it closes.
    drop(agent);
    poll_count(&squid, "CONNECT", &relay_target, 3).await?;

    // `gangway doctor` follows the same decision: it names the proxy and
    // where it was set, and every check on the way to the relay passes
    // through it (the relay's name only squid resolves).
    let (done, report) = corp.doctor(&env).await?;
    let proxy = squid.url(None);
    for name in [
        "proxy",
        "dns",
        "relay",
        "tls",
        "identity provider",
        "token",
        "tunnel",
    ] {
        let c = check(&report, name);
        assert_eq!(c["status"], "PASS", "{name}: {c}\n{}", done.stderr);
    }
    let said = check(&report, "proxy")["detail"].to_string();
    assert!(
        said.contains(&format!("via proxy {proxy} (from HTTPS_PROXY)")),
        "{said}"
    );
    let said = check(&report, "relay")["detail"].to_string();
    assert!(said.contains("opened a CONNECT tunnel"), "{said}");
    assert!(!done.stdout.contains(PROXY_USER.1), "{}", done.stdout);
    Ok(())
}

/// The check named `name` of a doctor report.
fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

/// Waits until squid logged at least `n` `method` lines for `target`.
async fn poll_count(squid: &Squid, method: &str, target: &str, n: usize) -> Result<usize> {
    gangway_tests::peers::process::poll(
        &format!("{n} {method} {target} lines in squid's log"),
        Duration::from_secs(15),
        || {
            let c = squid
                .access_log()
                .iter()
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.get(5) == Some(&method) && f.get(6).is_some_and(|u| u.contains(target))
                })
                .count();
            Ok((c >= n).then_some(c))
        },
    )
    .await
}

/// `NO_PROXY` sends a host around the proxy: the provider in `NO_PROXY` is
/// never asked of squid (the agent then cannot resolve it itself, and says
/// so), while the relay still goes through it; the decision says why.
#[tokio::test(flavor = "multi_thread")]
async fn no_proxy_is_honoured() -> Result<()> {
    let corp = Corp::start().await?;
    let squid = corp.squid(&[PROXY_USER], None)?;
    corp.write_config("", Some(&corp.cert.cert))?;
    let env = [
        var("HTTPS_PROXY", squid.url(Some(PROXY_USER))),
        var("NO_PROXY", format!("localhost,.{}", "idp.corp.test")),
    ];
    let done = corp
        .run(&["login", "--device", "--env", "corp"], &env)
        .await?;
    assert_failure("login with the provider in NO_PROXY", &done);
    assert!(done.stderr.contains(IDP_HOST), "{}", done.stderr);
    assert!(!done.stderr.contains("proxy at"), "{}", done.stderr);
    let relay_target = format!("{RELAY_HOST}:{}", corp.relay.addr.port());
    squid
        .wait_logged("CONNECT", &relay_target, Duration::from_secs(10))
        .await?;
    let log = squid.access_log();
    assert!(
        !log.iter().any(|l| l.contains(IDP_HOST)),
        "the provider went through squid: {log:?}"
    );

    // The same decision, as `gangway doctor` will show it.
    let tls = gangway_agent::tls::client_config(Some(&corp.cert.cert))?;
    let pairs = [
        ("HTTPS_PROXY", squid.url(None)),
        ("NO_PROXY", format!("localhost,.{IDP_HOST}")),
    ];
    let pairs: [(&str, &str); 2] = [(pairs[0].0, &pairs[0].1), (pairs[1].0, &pairs[1].1)];
    let egress = Egress::with_env(tls, None, &pairs)?;
    assert_eq!(
        egress
            .route(&url::Url::parse(corp.idp.issuer())?)
            .to_string(),
        format!("direct (NO_PROXY matches .{IDP_HOST})")
    );
    assert_eq!(
        egress
            .route(&url::Url::parse(&corp.relay_url())?)
            .to_string(),
        format!("via proxy {} (from HTTPS_PROXY)", squid.url(None))
    );
    Ok(())
}

/// A wrong proxy password, none at all, and a proxy that is not there:
/// each in its plain sentence (the proxy named, its password never shown),
/// from the CLI (the relay's API) and from the tunnel's WebSocket.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_failures_are_said_plainly() -> Result<()> {
    let corp = Corp::start().await?;
    let squid = corp.squid(&[PROXY_USER], None)?;
    let proxy = squid.url(None);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let gone = format!("http://{}", closed.local_addr()?);
    drop(closed);

    for (setting, sentence, fix) in [
        (
            format!("http://alice:wrong-pw@{}", squid.addr),
            format!("the proxy at {proxy} rejected the proxy user name or password"),
            "check the user name and password in the proxy URL",
        ),
        (
            proxy.clone(),
            format!("the proxy at {proxy} asks for a user name and password"),
            "http://USER:PASSWORD@HOST:PORT",
        ),
        (
            gone.clone(),
            format!("cannot reach the proxy at {gone} (connection refused)"),
            "check the proxy setting",
        ),
    ] {
        // The environment's own `proxy` key (it wins over HTTPS_PROXY).
        corp.write_config(&format!("proxy = {setting:?}\n"), Some(&corp.cert.cert))?;
        let env = [var("HTTPS_PROXY", squid.url(Some(PROXY_USER)))];
        let done = corp
            .run(&["login", "--device", "--env", "corp"], &env)
            .await?;
        assert_failure(&format!("login through {setting}"), &done);
        assert!(
            done.stderr.contains(&sentence),
            "no {sentence:?} in:\n{}",
            done.stderr
        );
        assert!(done.stderr.contains(fix), "no {fix:?} in:\n{}", done.stderr);
        assert!(!done.stderr.contains("wrong-pw"), "{}", done.stderr);
        assert!(!done.stderr.contains("tunnel error"), "{}", done.stderr);

        // `gangway doctor` names the same failure at its relay check, with
        // the fix, and fails.
        let (doc, report) = corp.doctor(&env).await?;
        assert_eq!(doc.status.code(), Some(1), "{}", doc.stdout);
        let relay_check = check(&report, "relay");
        assert_eq!(relay_check["status"], "FAIL", "{relay_check}");
        let detail = relay_check["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&sentence), "no {sentence:?} in {detail}");
        let doctor_fix = relay_check["fix"].as_str().unwrap_or_default();
        assert!(doctor_fix.contains(fix), "no {fix:?} in {doctor_fix}");
        assert!(!doc.stdout.contains("wrong-pw"), "{}", doc.stdout);

        // The tunnel's own connection says the same.
        let tls = gangway_agent::tls::client_config(Some(&corp.cert.cert))?;
        let explicit = ExplicitProxy {
            setting: ProxySetting::parse(&setting).map_err(anyhow::Error::msg)?,
            origin: "test".into(),
        };
        let egress = Egress::with_env(tls, Some(&explicit), &[])?;
        let relay = url::Url::parse(&corp.relay_url())?;
        let token = gangway_wire::Token::new(corp.idp.client_credentials_token(CI_DEV).await?);
        let e = gangway_agent::session::Session::connect(&relay, &egress, &token)
            .await
            .expect_err("connected through a failing proxy");
        let said = gangway_agent::error::error_chain(&e);
        assert!(said.contains(&sentence), "no {sentence:?} in {said}");
        assert!(!said.contains("wrong-pw"), "{said}");
    }

    // A port squid does not allow CONNECT to: its refusal, with its status.
    let tls = gangway_agent::tls::client_config(Some(&corp.cert.cert))?;
    let explicit = ExplicitProxy {
        setting: ProxySetting::parse(&squid.url(Some(PROXY_USER))).map_err(anyhow::Error::msg)?,
        origin: "test".into(),
    };
    let egress = Egress::with_env(tls, Some(&explicit), &[])?;
    let other = url::Url::parse(&format!("https://{RELAY_HOST}:9"))?;
    let token = gangway_wire::Token::new("unused".to_string());
    let e = gangway_agent::session::Session::connect(&other, &egress, &token)
        .await
        .expect_err("squid let CONNECT through to a port it does not allow");
    let said = gangway_agent::error::error_chain(&e);
    let sentence = format!(
        "the proxy at {proxy} refused to connect to {RELAY_HOST}:9 (it answered 403 Forbidden)"
    );
    assert!(said.contains(&sentence), "no {sentence:?} in {said}");
    Ok(())
}

/// A TLS-inspecting squid (ssl-bump, its own CA): once its CA is in the
/// trust store (`SSL_CERT_FILE` standing for the OS store) `gangway up`
/// and the tunnel work through it; without, the user is told a proxy
/// probably inspects TLS.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_inspecting_squid_works_once_trusted_and_is_named_when_not() -> Result<()> {
    let corp = Corp::start().await?;
    // The inspecting CA, as IT would make it: certificate and key in one
    // PEM file for squid.
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Corp TLS Inspection CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate()?;
    let ca = ca.self_signed(&key)?;
    let ca_only = corp.dir.path().join("inspect-ca.pem");
    std::fs::write(&ca_only, ca.pem())?;
    let ca_and_key = corp.dir.path().join("inspect-ca-key.pem");
    std::fs::write(&ca_and_key, format!("{}{}", ca.pem(), key.serialize_pem()))?;
    let squid = corp.squid(
        &[],
        Some(Bump {
            ca_cert_and_key: &ca_and_key,
            upstream_ca: &corp.cert.cert,
        }),
    )?;
    let token = corp.dir.path().join("token");
    std::fs::write(&token, corp.idp.client_credentials_token(CI_DEV).await?)?;
    let token_s = token.to_str().unwrap().to_string();
    let env_proxy = var("HTTPS_PROXY", squid.url(None));

    // Not trusted: the relay's own CA file does not cover squid's forgery.
    corp.write_config("", Some(&corp.cert.cert))?;
    let empty = corp.dir.path().join("empty-store.pem");
    std::fs::write(&empty, "")?;
    let sentence = format!(
        "the relay's certificate is not signed by an authority this computer trusts; the proxy at {} probably inspects TLS",
        squid.url(None)
    );
    let mut up = Process::spawn_captured(
        "gangway up (untrusted inspection)",
        corp.gangway(
            &[
                "up",
                "--env",
                "corp",
                "--token-file",
                &token_s,
                "--listen",
                "confluence=127.0.0.1:0",
            ],
            &[env_proxy.clone(), var("SSL_CERT_FILE", &empty)],
        )?,
    )?;
    up.wait_line("the plain sentence", Duration::from_secs(30), |l| {
        l.contains(&sentence)
    })
    .await?;
    up.stop();
    // The tunnel's own connection says the same.
    let tls = gangway_agent::tls::client_config(Some(&corp.cert.cert))?;
    let pairs = [("HTTPS_PROXY", squid.url(None))];
    let egress = Egress::with_env(tls, None, &[(pairs[0].0, pairs[0].1.as_str())])?;
    let relay = url::Url::parse(&corp.relay_url())?;
    let e = gangway_agent::session::Session::connect(
        &relay,
        &egress,
        &gangway_wire::Token::new(std::fs::read_to_string(&token)?),
    )
    .await
    .expect_err("trusted a forged certificate");
    let said = gangway_agent::error::error_chain(&e);
    assert!(said.contains(&sentence), "no {sentence:?} in {said}");

    // Trusted through the "OS store": works, and squid saw inside.
    let mut cmd = corp.gangway(
        &[
            "up",
            "--env",
            "corp",
            "--token-file",
            &token_s,
            "--listen",
            "confluence=127.0.0.1:0",
        ],
        &[env_proxy, var("SSL_CERT_FILE", &ca_only)],
    )?;
    cmd.env("GANGWAY_CONTROL_SOCKET", corp.dir.path().join("agent.sock"));
    let agent = AgentProcess::spawn(cmd, &["confluence"])?;
    let page = agent
        .http("confluence")?
        .get(format!("http://{}/", agent.addr("confluence")))
        .send()
        .await?
        .text()
        .await?;
    assert!(page.contains("Engineering space"), "{page}");
    let relay_target = format!("{RELAY_HOST}:{}", corp.relay.addr.port());
    // Bumped: squid logs the requests it saw inside the TLS.
    squid
        .wait_logged(
            "GET",
            &format!("https://{relay_target}/v1/catalog"),
            Duration::from_secs(10),
        )
        .await?;
    Ok(())
}
