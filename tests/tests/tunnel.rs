//! End to end: git through the agent's local ports, over one TLS WebSocket
//! to a real `gangway-relay`, with tokens from a real OIDC provider and real
//! git servers (lighttpd + `git http-backend`, `git daemon`) behind it.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use gangway_tests::gangway::{
    write_relay_config, AgentProcess, CountingBackend, IdentitySpec, RelayProcess, RelaySetup,
    ServiceSpec, TestCert,
};
use gangway_tests::peers::git::{self, GitDaemon, GitHttpServer, RepoFixture};
use gangway_tests::peers::oidc::{OidcProvider, CI_DEV, CI_READONLY, DEFAULT_AUDIENCE};

const DEV: &[&str] = &["developers"];

fn loopback0() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A service of `kind` with one backend, for `allow_groups` (None: all).
fn service<'a>(
    name: &'a str,
    kind: &'a str,
    backend: std::net::SocketAddr,
    allow_groups: Option<&'a [&'a str]>,
) -> ServiceSpec<'a> {
    ServiceSpec {
        name,
        kind,
        backends: vec![backend.to_string()],
        allow_groups,
    }
}

/// A relay on any port for `idp` with `services`, its config in `dir`.
fn start_relay(
    dir: &Path,
    cert: &TestCert,
    idp: &OidcProvider,
    services: &[ServiceSpec],
) -> Result<RelayProcess> {
    let config = write_relay_config(dir, loopback0(), cert, &identity(idp), services)?;
    RelayProcess::start(&config)
}

fn identity(idp: &OidcProvider) -> IdentitySpec<'_> {
    IdentitySpec {
        issuer: idp.issuer(),
        audience: DEFAULT_AUDIENCE,
        leeway_secs: 0,
        jwks_file: None,
    }
}

async fn token_file(idp: &OidcProvider, client: &str, dir: &Path) -> Result<std::path::PathBuf> {
    let token = idp.client_credentials_token(client).await?;
    let path = dir.join(format!("{client}.token"));
    std::fs::write(&path, token)?;
    Ok(path)
}

/// Clone and push over smart HTTP and over git://, both through the agent
/// and a TLS relay; contents and refs verified on the server side.
#[tokio::test(flavor = "multi_thread")]
async fn git_clone_and_push_through_the_tunnel() -> Result<()> {
    let idp = OidcProvider::start(DEFAULT_AUDIENCE, 60)?;
    let repos = RepoFixture::create("demo")?;
    let http = GitHttpServer::start(repos.root())?;
    let daemon = GitDaemon::start(repos.root())?;
    let cert = TestCert::new()?;
    let dir = tempfile::tempdir()?;
    let relay = start_relay(
        dir.path(),
        &cert,
        &idp,
        &[
            service("bitbucket", "http", http.addr(), Some(DEV)),
            service("git", "tcp", daemon.addr(), Some(DEV)),
        ],
    )?;
    let token = token_file(&idp, CI_DEV, dir.path()).await?;
    let agent = AgentProcess::start(&relay.url(), &cert.cert, &token, &["bitbucket", "git"], &[])?;

    let work = tempfile::tempdir()?;
    let env = agent.git_env()?;
    let urls = [
        format!("http://{}/scm/demo.git", agent.addr("bitbucket")),
        format!("git://{}/demo.git", agent.addr("git")),
    ];
    for (i, url) in urls.iter().enumerate() {
        let dest = work.path().join(format!("clone{i}"));
        let url2 = url.clone();
        let dest2 = dest.clone();
        let env2 = env.clone();
        let pushed = tokio::task::spawn_blocking(move || {
            git::clone_commit_push_with(&url2, &dest2, &format!("file{i}.txt"), &env2)
        })
        .await??;
        // The clone has the fixture's binary file, byte for byte.
        let blob = std::fs::read(dest.join(git::BINARY_PATH))?;
        assert!(
            blob == git::binary_blob(),
            "binary file differs after clone from {url}"
        );
        // The push landed in the real repository.
        assert_eq!(repos.head_commit("demo")?, pushed, "push via {url}");
    }

    // Both clones went through the relay as audited streams of one subject.
    let audit = relay.audit();
    let opened: Vec<_> = audit
        .iter()
        .filter(|e| e["event"] == "stream_open")
        .collect();
    assert!(opened.iter().any(|e| e["service"] == "bitbucket"));
    assert!(opened.iter().any(|e| e["service"] == "git"));
    assert!(opened.iter().all(|e| e["subject"] == CI_DEV));
    // One session carried all of it: no new handshake per connection.
    let sessions = audit
        .iter()
        .filter(|e| e["event"] == "session_open")
        .count();
    assert_eq!(sessions, 1, "every connection must reuse the one session");
    drop(agent);
    Ok(())
}

/// The relay is killed and started again on the same port: the agent
/// reconnects by itself (listeners stay bound) and a new clone succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn agent_reconnects_after_relay_restart() -> Result<()> {
    let idp = OidcProvider::start(DEFAULT_AUDIENCE, 60)?;
    let repos = RepoFixture::create("demo")?;
    let daemon = GitDaemon::start(repos.root())?;
    let cert = TestCert::new()?;
    let dir = tempfile::tempdir()?;
    let services = |d: &GitDaemon| vec![service("git", "tcp", d.addr(), None)];
    let mut relay = start_relay(dir.path(), &cert, &idp, &services(&daemon))?;
    let token = token_file(&idp, CI_DEV, dir.path()).await?;
    let agent = AgentProcess::start(&relay.url(), &cert.cert, &token, &["git"], &[])?;
    let url = format!("git://{}/demo.git", agent.addr("git"));
    let work = tempfile::tempdir()?;
    git::git(work.path(), &["clone", "--quiet", &url, "before"])?;

    let port = relay.addr;
    relay.kill();
    // While the relay is down, the listener is still bound.
    assert!(std::net::TcpStream::connect(agent.addr("git")).is_ok());

    let config = write_relay_config(dir.path(), port, &cert, &identity(&idp), &services(&daemon))?;
    let relay = RelayProcess::start(&config)?;
    assert_eq!(relay.addr, port);
    // No wait or retry here: the agent holds the connection until its
    // tunnel is back (bounded by --connect-wait).
    git::git(work.path(), &["clone", "--quiet", &url, "after"])?;
    assert_eq!(
        git::git(&work.path().join("after"), &["rev-parse", "HEAD"])?.trim(),
        repos.head_commit("demo")?
    );
    let reconnected = agent
        .process
        .stderr()
        .iter()
        .filter(|l| l.contains("tunnel connected"))
        .count();
    assert!(reconnected >= 2, "the agent should have connected twice");
    Ok(())
}

/// Streams the relay refuses: an unknown service and a service the caller's
/// groups don't allow. Each comes back with its typed reason, is audited,
/// and nothing reaches the backend. The catalog hides what is not allowed.
#[tokio::test(flavor = "multi_thread")]
async fn stream_refusals_are_typed_and_never_reach_the_backend() -> Result<()> {
    use gangway_agent::session::Session;
    use gangway_agent::AgentError;
    use gangway_wire::{RefusalCode, Token};

    let RelaySetup { idp, cert, dir } = RelaySetup::new()?;
    let backend = CountingBackend::start()?;
    let relay = start_relay(
        dir.path(),
        &cert,
        &idp,
        &[
            service("bitbucket", "tcp", backend.addr, Some(DEV)),
            service(
                "confluence",
                "tcp",
                backend.addr,
                Some(&["developers", "readers"]),
            ),
        ],
    )?;
    let reader = Token::new(idp.client_credentials_token(CI_READONLY).await?);
    let egress =
        gangway_agent::net::Egress::direct(gangway_agent::tls::client_config(Some(&cert.cert))?);
    let url = url::Url::parse(&relay.url())?;

    // The catalog shows the reader only what readers may use.
    let api = gangway_agent::relay_api::RelayApi::new(url.clone(), egress.clone())?;
    let catalog = api.catalog(&reader).await?;
    let names: Vec<_> = catalog.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["confluence"]);
    assert_eq!(catalog.subject, CI_READONLY);

    let session = Session::connect(&url, &egress, &reader).await?;
    match session.open("bitbucket").await {
        Err(AgentError::Refused(r)) => {
            assert_eq!(r.code, RefusalCode::Forbidden);
            assert!(
                r.message.contains("ci-readonly may not use bitbucket"),
                "{r}"
            );
        }
        Err(e) => panic!("expected a forbidden refusal, got {e}"),
        Ok(_) => panic!("expected a forbidden refusal, got a stream"),
    }
    match session.open("jira").await {
        Err(AgentError::Refused(r)) => {
            assert_eq!(r.code, RefusalCode::UnknownService);
            assert!(r.message.contains("jira"), "{r}");
        }
        Err(e) => panic!("expected unknown service, got {e}"),
        Ok(_) => panic!("expected unknown service, got a stream"),
    }
    // The session survives refusals: an allowed stream still opens, and
    // its connection is the backend's first and only one.
    let allowed = session.open("confluence").await;
    assert!(allowed.is_ok());
    let reached = backend
        .wait_for_connections(1, Duration::from_secs(10))
        .await?;
    assert_eq!(reached, 1, "only the allowed stream reached the backend");
    assert_eq!(
        backend.connections(),
        1,
        "only the allowed stream reached the backend"
    );

    let refused: Vec<_> = relay
        .audit()
        .into_iter()
        .filter(|e| e["event"] == "stream_refused")
        .collect();
    assert!(refused.iter().any(|e| e["code"] == "forbidden"
        && e["service"] == "bitbucket"
        && e["subject"] == CI_READONLY));
    assert!(refused
        .iter()
        .any(|e| e["code"] == "unknown_service" && e["service"] == "jira"));
    Ok(())
}

/// An http service whose only backend is down: the client gets an HTTP
/// error page naming the service and the reason, so git prints why
/// instead of hanging.
#[tokio::test(flavor = "multi_thread")]
async fn refused_http_stream_answers_with_the_reason() -> Result<()> {
    let RelaySetup { idp, cert, dir } = RelaySetup::new()?;
    // A backend that is down: the relay cannot reach it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let relay = start_relay(
        dir.path(),
        &cert,
        &idp,
        &[service("bitbucket", "http", dead, None)],
    )?;
    let token = token_file(&idp, CI_DEV, dir.path()).await?;
    let agent = AgentProcess::start(&relay.url(), &cert.cert, &token, &["bitbucket"], &[])?;
    let resp = agent
        .http("bitbucket")?
        .get(format!(
            "http://{}/scm/demo.git/info/refs?service=git-upload-pack",
            agent.addr("bitbucket")
        ))
        .send()
        .await?;
    assert_eq!(resp.status(), 503);
    let body = resp.text().await?;
    assert!(body.contains("no healthy backend for bitbucket"), "{body}");
    assert!(body.contains("Connection refused"), "{body}");

    let work = tempfile::tempdir()?;
    let err = git::git_with(
        work.path(),
        &[
            "clone",
            &format!("http://{}/scm/demo.git", agent.addr("bitbucket")),
        ],
        &agent.git_env()?,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("503"), "{err}");
    Ok(())
}
