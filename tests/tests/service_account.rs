//! Build machines: `--client-credentials`. A service account's client id
//! and secret come from the environment; the agent gets its token from the
//! real provider's client credentials grant, keeps it in memory (no
//! keychain on this machine's HOME), renews it before it expires, and never
//! writes the secret anywhere.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use gangway_tests::gangway::{
    bin_path, write_relay_config, AgentProcess, IdentitySpec, RelayProcess, ServiceSpec, TestCert,
};
use gangway_tests::peers::git::{self, GitHttpServer, RepoFixture};
use gangway_tests::peers::oidc::{OidcProvider, CI_CLIENT_SECRET, CI_DEV, DEFAULT_AUDIENCE};
use gangway_tests::peers::process::{assert_failure, assert_success, poll, Process};

/// Access tokens live this long, so the test sees renewals.
const TOKEN_TTL: u64 = 6;

struct World {
    _idp: OidcProvider,
    _repos: RepoFixture,
    _http: GitHttpServer,
    cert: TestCert,
    relay: RelayProcess,
    home: tempfile::TempDir,
}

impl World {
    fn start() -> Result<Self> {
        let idp = OidcProvider::start(DEFAULT_AUDIENCE, TOKEN_TTL)?;
        let repos = RepoFixture::create("demo")?;
        let http = GitHttpServer::start(repos.root())?;
        let cert = TestCert::new()?;
        let home = tempfile::tempdir()?;
        let config = write_relay_config(
            home.path(),
            "127.0.0.1:0".parse()?,
            &cert,
            &IdentitySpec {
                issuer: idp.issuer(),
                audience: DEFAULT_AUDIENCE,
                leeway_secs: 0,
                jwks_file: None,
            },
            &[ServiceSpec {
                name: "bitbucket",
                kind: "http",
                backends: vec![http.addr().to_string()],
                allow_groups: Some(&["developers"]),
            }],
        )?;
        let relay = RelayProcess::start(&config)?;
        Ok(World {
            _idp: idp,
            _repos: repos,
            _http: http,
            cert,
            relay,
            home,
        })
    }

    /// `gangway ARGS --relay … --ca-file … --client-credentials` as the
    /// service account `client_id` with `secret`, in a HOME of its own
    /// with no keychain.
    fn gangway(&self, args: &[&str], client_id: &str, secret: &str) -> Result<Command> {
        let mut cmd = Command::new(bin_path("gangway")?);
        cmd.args(args)
            .args(["--relay", &self.relay.url(), "--ca-file"])
            .arg(&self.cert.cert)
            .arg("--client-credentials")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("RUST_LOG", "debug")
            .env("GANGWAY_CLIENT_ID", client_id)
            .env("GANGWAY_CLIENT_SECRET", secret);
        Ok(cmd)
    }

    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![("HOME", self.home.path().into())]
    }
}

fn refreshes(relay: &RelayProcess) -> usize {
    relay
        .audit()
        .iter()
        .filter(|e| e["event"] == "token_refreshed" && e["subject"] == CI_DEV)
        .count()
}

fn clone(agent: &AgentProcess, dest: &Path) -> Result<()> {
    let url = format!("http://{}/scm/demo.git", agent.addr("bitbucket"));
    let env = agent.git_env()?;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    git::git_env(
        dest.parent().unwrap_or(dest),
        &["clone", "--quiet", &url, &dest.to_string_lossy()],
        &env,
    )?;
    ensure!(dest.join("README.md").exists(), "nothing cloned from {url}");
    Ok(())
}

/// `login --client-credentials` checks the account at the provider and the
/// relay and stores nothing; `up --client-credentials` serves git with the
/// account's token and renews it in memory through two token lifetimes.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_account_serves_git_and_renews_its_token_in_memory() -> Result<()> {
    let w = World::start()?;

    let mut login = w.gangway(&["login"], CI_DEV, CI_CLIENT_SECRET)?;
    let login = Process::spawn_captured("gangway login", &mut login)?
        .finish(Duration::from_secs(60))
        .await?;
    assert_success("gangway login --client-credentials", &login);
    ensure!(
        login.stdout.contains("Service account ci-dev is accepted")
            && login.stdout.contains("groups: developers"),
        "{}",
        login.stdout
    );

    let mut up = w.gangway(
        &["up", "--listen", "bitbucket=127.0.0.1:0"],
        CI_DEV,
        CI_CLIENT_SECRET,
    )?;
    for (k, v) in w.env() {
        up.env(k, v);
    }
    let mut agent = AgentProcess::spawn(up, &["bitbucket"])?;
    let work = tempfile::tempdir()?;
    clone(&agent, &work.path().join("first"))?;

    // Two in-band renewals: by the second, the first token (TTL s) has
    // expired, and the session the agent keeps is still usable.
    poll(
        "two in-band token renewals",
        Duration::from_secs(TOKEN_TTL * 6),
        || Ok((refreshes(&w.relay) >= 2).then_some(())),
    )
    .await?;
    clone(&agent, &work.path().join("second"))?;

    // The secret is in no output, the keychain was never used.
    agent.stop();
    for (what, text) in [
        ("login", format!("{}{}", login.stdout, login.stderr)),
        ("up", agent.process.output()),
    ] {
        ensure!(
            !text.contains(CI_CLIENT_SECRET),
            "the client secret appears in the output of gangway {what}:\n{text}"
        );
    }
    Ok(())
}

/// A wrong secret is refused at the provider and said plainly, without the
/// secret; nothing starts.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_client_secret_is_refused_in_plain_words() -> Result<()> {
    let w = World::start()?;
    let wrong = "not-the-secret-4711";
    for args in [
        &["login"][..],
        &["up", "--listen", "bitbucket=127.0.0.1:0"][..],
    ] {
        let mut cmd = w.gangway(args, CI_DEV, wrong)?;
        let done = Process::spawn_captured("gangway", &mut cmd)?
            .finish(Duration::from_secs(60))
            .await?;
        assert_failure(&format!("gangway {args:?} with a wrong secret"), &done);
        let all = format!("{}{}", done.stdout, done.stderr);
        ensure!(
            all.contains("refused the client id ci-dev or its secret"),
            "gangway {args:?}: {all}"
        );
        ensure!(!all.contains(wrong), "the secret was printed: {all}");
    }
    Ok(())
}
