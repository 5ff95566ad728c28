//! `gangway demo`: the whole path on one machine, with nothing but git.
//!
//! Starts, all on 127.0.0.1: a relay with a self-signed certificate and an
//! ephemeral signing key (dev mode: loopback only, keys never leave the
//! process), a demo repository served over smart HTTP by git's own `git
//! http-backend` (the Bitbucket stand-in, [`http_backend`]) and by `git
//! daemon`, a small web page standing in for Confluence, and the same agent
//! as `gangway up` with its control API — then prints what to try. Like a
//! sign-in in the tray app, it registers `gangway git credential` in
//! `~/.gitconfig` for its local HTTP address (so `git clone` passes the
//! local door with no password prompt) and removes exactly that entry when
//! it stops.

mod http_backend;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use gangway_agent::agent::{Agent, AgentOptions, EnvSource, EnvSpec, Managed, Tokens};
use gangway_agent::control::{self, AgentControl};
use gangway_agent::status::{Frontend, Phase};
use gangway_agent::token::TokenSource;
use gangway_agent::tunnel::Backoff;
use gangway_relay::config::{IdentityConfig, ServiceConfig, ServiceKind};
use gangway_relay::{KeySource, Relay, RelayConfig, TlsMode};
use gangway_wire::Token;
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ISSUER: &str = "https://demo.gangway.invalid";
const AUDIENCE: &str = "gangway-demo";

pub async fn run() -> anyhow::Result<()> {
    let git = which("git").context("the demo needs git installed (apt-get install git)")?;
    let dir = tempfile::Builder::new().prefix("gangway-demo-").tempdir()?;
    let stop = CancellationToken::new();

    // A repository to clone: `repos/demo/demo.git`, at
    // `/scm/demo/demo.git` over HTTP as on Bitbucket, and at `/demo.git`
    // from git daemon.
    let repos = dir.path().join("repos");
    let project = repos.join("demo");
    make_demo_repo(&git, &project).await?;
    let scm = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let scm_addr = scm.local_addr()?;
    tokio::spawn(http_backend::serve(
        scm,
        git.clone(),
        repos.clone(),
        stop.clone(),
    ));
    let daemon_port = free_port()?;
    // Run git-daemon itself: `git daemon` is a wrapper that forks it, and
    // killing the wrapper would leave the daemon running.
    let mut daemon = tokio::process::Command::new(git_daemon_path(&git)?)
        .args([
            "--reuseaddr",
            "--listen=127.0.0.1",
            &format!("--port={daemon_port}"),
            &format!("--base-path={}", project.display()),
            "--export-all",
            "--enable=receive-pack",
        ])
        .arg(&project)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting git daemon")?;
    wait_for_port(SocketAddr::from((Ipv4Addr::LOCALHOST, daemon_port))).await?;

    // The Confluence stand-in: one page.
    let web = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let web_addr = web.local_addr()?;
    tokio::spawn(serve_page(web, stop.clone()));

    // The relay: self-signed TLS, ephemeral Ed25519 signing key.
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    let cert_path = dir.path().join("relay.crt");
    let key_path = dir.path().join("relay.key");
    std::fs::write(&cert_path, ck.cert.pem())?;
    std::fs::write(&key_path, ck.key_pair.serialize_pem())?;
    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(serde_json::json!({
        "keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "demo",
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signing.public_key_raw()),
        }]
    }))?;
    let relay_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let relay_addr = relay_listener.local_addr()?;
    let config = RelayConfig {
        listen: relay_addr,
        // One person's demo: one worker thread is plenty.
        workers: 1,
        tls: TlsMode::Files {
            cert: cert_path.clone(),
            key: key_path,
        },
        identity: IdentityConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            client_id: "gangway-demo".into(),
            scopes: vec!["openid".into()],
            groups_claim: "groups".into(),
            algorithms: vec![jsonwebtoken::Algorithm::EdDSA],
            leeway: Duration::from_secs(30),
            jwks_min_refetch: Duration::from_secs(30),
            jwks_file: None,
        },
        audit_path: Some(dir.path().join("audit.jsonl")),
        audit_syslog: None,
        admin: None,
        shared: Default::default(),
        assertion: Default::default(),
        limits: Default::default(),
        proxy_protocol: Default::default(),
        drain: Default::default(),
        dpop: Default::default(),
        services: vec![
            service(
                "bitbucket",
                "Bitbucket (demo: git http-backend)",
                ServiceKind::Http,
                7990,
                scm_addr.port(),
            ),
            service(
                "git",
                "Demo git (git daemon)",
                ServiceKind::Tcp,
                9418,
                daemon_port,
            ),
            service(
                "confluence",
                "Confluence (demo page)",
                ServiceKind::Http,
                8090,
                web_addr.port(),
            ),
        ],
    };
    let relay = Arc::new(Relay::new(config, KeySource::Static(jwks))?);
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = gangway_relay::run(relay_listener, relay, stop.cancelled_owned()).await
            {
                tracing::error!("demo relay: {e}");
            }
        });
    }

    // A token for the demo user, signed with the ephemeral key.
    let now = gangway_relay::auth::now_unix();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("demo".into());
    let token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "demo-user",
            "groups": ["developers"], "iat": now, "exp": now + 12 * 3600,
        }),
        &jsonwebtoken::EncodingKey::from_ed_der(&signing.serialize_der()),
    )?;

    // The agent, on the ports users know, or any free port if taken.
    let mut listen = BTreeMap::new();
    for (name, port) in [("bitbucket", 7990u16), ("git", 9418), ("confluence", 8090)] {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if std::net::TcpListener::bind(addr).is_err() {
            listen.insert(name.to_string(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        }
    }
    let relay_url = url::Url::parse(&format!("https://127.0.0.1:{}", relay_addr.port()))?;
    let agent = Agent::start(AgentOptions {
        config_path: None,
        ca_override: None,
        environments: vec![EnvSpec {
            name: "demo".into(),
            relay: relay_url.clone(),
            ca_file: Some(cert_path.clone()),
            // A loopback relay: never proxied.
            proxy: None,
            ports: BTreeMap::new(),
            login_hint: "gangway demo".into(),
            source: EnvSource::CommandLine,
            locked: false,
        }],
        initial: Some("demo".into()),
        tokens: Tokens::Fixed(TokenSource::Static(Token::new(token))),
        listen,
        allow_network_listen: false,
        connect_wait: Duration::from_secs(10),
        backoff: Backoff::default(),
        browser: std::env::var("BROWSER").ok(),
        unreachable_notice_after: gangway_agent::notices::UNREACHABLE_NOTICE_AFTER,
        frontend: Frontend::Cli,
        managed: Managed::default(),
    });
    // The control API answers `gangway git credential` and `gangway open`.
    let served =
        match control::serve_control(Arc::new(AgentControl(agent.clone())), stop.clone()).await {
            Ok(Some(_)) => true,
            Ok(None) => {
                eprintln!(
                    "note: another Gangway agent (the tray app or `gangway up`) is running; \
                 quit it for git's credential helper to reach the demo"
                );
                false
            }
            Err(e) => {
                eprintln!("note: no control API: {e}");
                false
            }
        };
    let snap = agent.settled().await;
    if let Phase::Failed { reason } = &snap.phase {
        bail!("the demo agent failed: {reason}");
    }
    let addr_of = |name: &str| {
        snap.services
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.local_addr.as_deref())
            .and_then(|a| a.parse::<SocketAddr>().ok())
    };
    let (Some(scm_local), Some(git_addr), Some(web_local)) =
        (addr_of("bitbucket"), addr_of("git"), addr_of("confluence"))
    else {
        bail!("the demo agent could not bind its listeners");
    };
    let git_url = if git_addr.port() == 9418 {
        "git://127.0.0.1/demo.git".to_string()
    } else {
        format!("git://{git_addr}/demo.git")
    };
    // As after a sign-in in the tray: git asks Gangway for the local
    // credential of the demo's HTTP address; undone when the demo stops.
    let registered = if served {
        match crate::commands::git::setup(&snap) {
            Ok(urls) => urls,
            Err(e) => {
                eprintln!("note: git setup: {e:#}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    println!("Gangway demo is running: relay {relay_url}, signed in as demo-user.");
    println!();
    println!("Try, in another terminal:");
    println!("  git clone http://{scm_local}/scm/demo/demo.git gangway-demo");
    println!("  (edit, commit, then: git push origin main)");
    println!("  git clone {git_url} gangway-demo-git   (the same repository over git://)");
    let once = gangway_agent::door::http::open_url(
        web_local.port(),
        &agent.door().secrets().one_time_token(web_local.port()),
    );
    println!("  open {once}");
    println!("     (the Confluence stand-in, through the local door: a one-time link, valid for a minute)");
    println!();
    println!(
        "Every byte goes through one TLS WebSocket to the relay. Audit log: {}",
        dir.path().join("audit.jsonl").display()
    );
    println!("Press Ctrl-C to stop.");

    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let terminated = term.recv();
    #[cfg(not(unix))]
    let terminated = std::future::pending::<Option<()>>();
    // Ctrl-C or SIGTERM: stop everything this demo started, git daemon too.
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = terminated => {}
        status = daemon.wait() => bail!("git daemon stopped: {:?}", status),
    }
    if !registered.is_empty() {
        if let Err(e) = crate::commands::git::remove_urls(&registered) {
            eprintln!("note: git remove: {e:#}");
        }
    }
    agent.shutdown().await;
    stop.cancel();
    let _ = daemon.kill().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

fn service(
    name: &str,
    display: &str,
    kind: ServiceKind,
    local_port: u16,
    backend_port: u16,
) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        display_name: display.into(),
        kind,
        local_port,
        backends: vec![format!("127.0.0.1:{backend_port}")],
        allow_groups: Some(vec!["developers".into()]),
        connect_timeout: Duration::from_secs(5),
        http: Default::default(),
        require_dpop: false,
    }
}

async fn make_demo_repo(git: &Path, repos: &Path) -> anyhow::Result<()> {
    let work = repos.join("work");
    let bare = repos.join("demo.git");
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join("README.md"),
        "# Demo repository\n\nCloned through Gangway: git -> agent -> TLS WebSocket -> relay -> git daemon.\n",
    )?;
    let run = |args: &[&str], cwd: &Path| {
        let out = std::process::Command::new(git)
            .args([
                "-c",
                "user.name=Gangway Demo",
                "-c",
                "user.email=demo@gangway.invalid",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(cwd)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()?;
        if !out.status.success() {
            bail!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(&["init", "-q"], &work)?;
    run(&["add", "."], &work)?;
    run(&["commit", "-q", "-m", "Demo repository"], &work)?;
    run(
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
        repos,
    )?;
    run(&["config", "receive.denyCurrentBranch", "ignore"], &bare)?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

async fn serve_page(listener: TcpListener, stop: CancellationToken) {
    const PAGE: &str = "<!doctype html><html><head><meta charset=utf-8><title>Confluence (Gangway demo)</title></head>\
<body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\"><h1>Confluence stand-in</h1>\
<p>This page came through Gangway: browser &rarr; agent on 127.0.0.1 &rarr; one TLS WebSocket &rarr; relay &rarr; this server.</p></body></html>";
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.cancelled() => return,
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(
                    hyper::Response::builder()
                        .header("content-type", "text/html; charset=utf-8")
                        .body(Full::new(Bytes::from_static(PAGE.as_bytes())))
                        .expect("static response"),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// `git-daemon` in git's exec path.
fn git_daemon_path(git: &Path) -> anyhow::Result<std::path::PathBuf> {
    let out = std::process::Command::new(git)
        .arg("--exec-path")
        .output()?;
    let exec_path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let daemon = Path::new(&exec_path).join("git-daemon");
    if !daemon.is_file() {
        bail!("git-daemon not found in {exec_path} (install git's daemon: apt-get install git)");
    }
    Ok(daemon)
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

async fn wait_for_port(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr} did not start listening")
}
