//! Relays in production, sharing one Redis (issue 15): a per-user limit
//! held across two relays together, the per-relay fallback while Redis is
//! down and the return to shared limits, subject locks that end sessions
//! on every relay, the admin API's refusals, drain, the per-subject
//! session cap, Prometheus metrics checked by `promtool`, and audit lines
//! arriving in rsyslog.
//!
//! Real peers: Debian's redis-server, rsyslogd and promtool, nginx as the
//! backend, the test OIDC provider; the real `gangway-relay` (and its
//! `admin` CLI) and `gangway up` agents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use gangway_tests::gangway::{bin_path, http_service, AgentProcess, RelayProcess, RelaySetup};
use gangway_tests::peers::nginx::ConfluenceNode;
use gangway_tests::peers::oidc::{CI_DEV, CI_NOGROUPS, CI_READONLY};
use gangway_tests::peers::process::{poll, require_program, startup_timeout};
use gangway_tests::peers::redis::RedisServer;
use gangway_tests::peers::rsyslog::Rsyslog;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The local admin token every relay of a test shares.
const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Relays sharing one Redis, with an nginx node behind an http service
/// `wiki` and a tcp service `raw` (to the same node).
struct Fleet {
    setup: RelaySetup,
    redis: RedisServer,
    node: ConfluenceNode,
    relays: Vec<Relay>,
    token_file: PathBuf,
}

/// One relay and its admin address.
struct Relay {
    process: RelayProcess,
    admin: SocketAddr,
}

impl Fleet {
    /// `n` relays, each with `tables` (raw TOML: `[[rate_limit]]`,
    /// `[limits]`, `[audit.syslog]` …) on top of `[admin]`, `[redis]` and
    /// the services.
    async fn start(n: usize, tables: &str) -> Result<Self> {
        let setup = RelaySetup::new()?;
        let redis = RedisServer::start()?;
        let node = ConfluenceNode::start("node1")?;
        let token_file = setup.dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n"))?;
        let mut fleet = Fleet {
            setup,
            redis,
            node,
            relays: Vec::new(),
            token_file,
        };
        for i in 0..n {
            let relay = fleet.relay(&format!("relay{i}"), tables).await?;
            fleet.relays.push(relay);
        }
        Ok(fleet)
    }

    async fn relay(&self, name: &str, tables: &str) -> Result<Relay> {
        let services = http_service("wiki", 0, &[self.node.addr()], "")
            + &format!(
                "\n[[service]]\nname = \"raw\"\nkind = \"tcp\"\nlocal_port = 0\nbackends = [\"{}\"]\n",
                self.node.addr()
            );
        let tables = format!(
            r#"
[admin]
listen = "127.0.0.1:0"
token_file = {token:?}
admin_group = "developers"

[redis]
url = {url:?}
expected_relays = 2
timeout_ms = 300

{tables}
{services}"#,
            token = self.token_file.display().to_string(),
            url = self.redis.url(),
        );
        let mut process = self
            .setup
            .relay_named(name, "listen = \"127.0.0.1:0\"", &tables)?;
        let line = process
            .process
            .wait_line(
                "the admin listener",
                startup_timeout(Duration::from_secs(10)),
                |l| l.contains("admin listening on http://"),
            )
            .await?;
        let admin = line
            .rsplit("http://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .with_context(|| format!("no address in {line:?}"))?;
        Ok(Relay { process, admin })
    }

    /// A `gangway up` of `client` on relay `i`, for `wiki` and `raw`.
    async fn agent(&self, i: usize, client: &str) -> Result<AgentProcess> {
        self.setup
            .agent(&self.relays[i].process, client, &["wiki", "raw"])
            .await
    }

    async fn token(&self, client: &str) -> Result<String> {
        self.setup.idp.client_credentials_token(client).await
    }
}

/// A client that opens a new connection (a new stream) for each request.
fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// `GET /` on `wiki` through `agent`: status and `Retry-After`.
async fn get_wiki(agent: &AgentProcess) -> Result<(u16, Option<String>, String)> {
    let resp = http()?
        .get(format!("http://{}/rest/api/1", agent.addr("wiki")))
        // The local door's credential (the agent's HTTP gate wants it).
        .header(reqwest::header::AUTHORIZATION, agent.door_auth("wiki")?)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((status, retry, resp.text().await?))
}

/// Polls GETs through `agent` until one answers `status`.
async fn wiki_status(agent: &AgentProcess, status: u16, what: &str) -> Result<()> {
    for _ in 0..100 {
        if get_wiki(agent).await?.0 == status {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out waiting for {what} (status {status})")
}

/// `n` GETs through `agent`, each expected to be 200.
async fn allowed(agent: &AgentProcess, n: usize, what: &str) -> Result<()> {
    for i in 0..n {
        let (status, _, body) = get_wiki(agent).await?;
        ensure!(status == 200, "{what}: request {i} got {status}: {body}");
    }
    Ok(())
}

/// The next GET through `agent` is refused as rate limited.
async fn limited(agent: &AgentProcess, what: &str) -> Result<()> {
    let (status, retry, body) = get_wiki(agent).await?;
    ensure!(status == 429, "{what}: got {status}, not 429: {body}");
    let retry: u64 = retry
        .context("429 without Retry-After")?
        .parse()
        .context("Retry-After is not a number of seconds")?;
    ensure!(retry >= 1, "Retry-After {retry}");
    ensure!(
        body.contains("wait"),
        "the page does not say to wait: {body}"
    );
    Ok(())
}

/// `GET http://ADDR/metrics`.
async fn scrape(admin: SocketAddr) -> Result<String> {
    let resp = http()?
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?;
    ensure!(resp.status() == 200, "metrics: {}", resp.status());
    Ok(resp.text().await?)
}

/// The value of the sample `series` (name with labels, as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until the relay's log has a line containing `what`.
async fn logged(relay: &mut Relay, what: &str) -> Result<()> {
    relay
        .process
        .process
        .wait_line(what, Duration::from_secs(20), |l| l.contains(what))
        .await?;
    Ok(())
}

/// `gangway-relay admin --url … --token-file … ARGS`.
async fn admin_cli(
    relay: &Relay,
    token_file: &std::path::Path,
    args: &[&str],
) -> Result<std::process::Output> {
    let out = tokio::process::Command::new(bin_path("gangway-relay")?)
        .arg("admin")
        .arg("--url")
        .arg(format!("http://{}", relay.admin))
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .env_remove("GANGWAY_ADMIN_TOKEN")
        .output()
        .await?;
    Ok(out)
}

fn stdout_json(out: &std::process::Output) -> Result<serde_json::Value> {
    ensure!(
        out.status.success(),
        "admin CLI failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A per-user limit of 4 requests holds across both relays together
/// (429 + Retry-After, audit line, metric); with Redis down each relay
/// allows its share (4 ÷ 2), says so in its log and metrics; with Redis
/// back the limit is shared again.
#[tokio::test(flavor = "multi_thread")]
async fn a_per_user_limit_holds_across_relays_falls_back_and_is_shared_again() -> Result<()> {
    let mut fleet = Fleet::start(
        2,
        r#"
[[rate_limit]]
name = "rest-api"
on = "requests"
service = "wiki"
path_prefix = "/rest/"
limit = 4
per_secs = 3600
"#,
    )
    .await?;
    let dev = [fleet.agent(0, CI_DEV).await?, fleet.agent(1, CI_DEV).await?];

    // Shared: 2 through each relay, then both refuse.
    allowed(&dev[0], 2, "ci-dev via relay 0").await?;
    allowed(&dev[1], 2, "ci-dev via relay 1").await?;
    limited(&dev[0], "ci-dev's 5th request, via relay 0").await?;
    limited(&dev[1], "ci-dev's 6th request, via relay 1").await?;
    let audit = fleet.relays[0].process.audit();
    ensure!(
        audit.iter().any(|e| e["event"] == "http_refused"
            && e["status"] == 429
            && e["subject"] == CI_DEV
            && e["reason"].as_str().is_some_and(|r| r.contains("rest-api"))),
        "no audit line for the refusal: {audit:#?}"
    );
    let m = scrape(fleet.relays[0].admin).await?;
    assert_eq!(
        sample(&m, r#"gangway_relay_rate_limited_total{limit="rest-api"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, "gangway_relay_rate_limits_shared"), Some(1.0));

    // Redis down: each relay alone, at 4 ÷ 2 for a user it has not seen.
    fleet.redis.stop();
    let ro = [
        fleet.agent(0, CI_READONLY).await?,
        fleet.agent(1, CI_READONLY).await?,
    ];
    for (i, agent) in ro.iter().enumerate() {
        allowed(agent, 2, &format!("ci-readonly via relay {i}, Redis down")).await?;
        limited(
            agent,
            &format!("ci-readonly's 3rd via relay {i}, Redis down"),
        )
        .await?;
    }
    for relay in &mut fleet.relays {
        logged(relay, "Redis out of reach").await?;
        let m = scrape(relay.admin).await?;
        assert_eq!(
            sample(&m, "gangway_relay_rate_limits_shared"),
            Some(0.0),
            "{m}"
        );
        let fallbacks = sample(
            &m,
            r#"gangway_relay_rate_limit_fallback_decisions_total{limit="rest-api"}"#,
        )
        .unwrap_or(0.0);
        assert!(fallbacks >= 3.0, "fallback decisions {fallbacks}:\n{m}");
    }

    // Redis back (empty): shared again, 4 across both.
    fleet.redis.restart()?;
    for relay in &mut fleet.relays {
        logged(relay, "Redis reachable again").await?;
    }
    allowed(&dev[0], 2, "ci-dev via relay 0, Redis back").await?;
    allowed(&dev[1], 2, "ci-dev via relay 1, Redis back").await?;
    limited(&dev[0], "ci-dev's 5th, Redis back").await?;
    for relay in &fleet.relays {
        let m = scrape(relay.admin).await?;
        assert_eq!(
            sample(&m, "gangway_relay_rate_limits_shared"),
            Some(1.0),
            "{m}"
        );
    }
    Ok(())
}

/// A limit on new streams refuses the next stream with the typed
/// `rate_limited` result, across both relays, with an audit line.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_limit_is_a_typed_refusal_across_relays() -> Result<()> {
    let fleet = Fleet::start(
        2,
        r#"
[[rate_limit]]
name = "raw-streams"
on = "streams"
service = "raw"
limit = 2
per_secs = 3600
"#,
    )
    .await?;
    let agents = [fleet.agent(0, CI_DEV).await?, fleet.agent(1, CI_DEV).await?];
    // One raw HTTP exchange over the tcp service: the node's answer, or
    // nothing when the stream was refused.
    async fn exchange(agent: &AgentProcess) -> Result<Vec<u8>> {
        let mut s = tokio::net::TcpStream::connect(agent.addr("raw")).await?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .context("no end of the exchange within 10 s")??;
        Ok(out)
    }
    ensure!(exchange(&agents[0]).await?.starts_with(b"HTTP/1.1 200"));
    ensure!(exchange(&agents[1]).await?.starts_with(b"HTTP/1.1 200"));
    let refused = exchange(&agents[1]).await?;
    ensure!(
        !refused.starts_with(b"HTTP/"),
        "the third stream reached the backend"
    );
    let audit = fleet.relays[1]
        .process
        .wait_audit("the typed refusal", Duration::from_secs(10), |e| {
            e["event"] == "stream_refused" && e["code"] == "rate_limited" && e["service"] == "raw"
        })
        .await?;
    ensure!(audit.iter().any(|e| e["reason"]
        .as_str()
        .is_some_and(|r| r.contains("raw-streams"))));
    let m = scrape(fleet.relays[1].admin).await?;
    assert_eq!(
        sample(&m, r#"gangway_relay_refusals_total{reason="rate_limited"}"#),
        Some(1.0),
        "{m}"
    );
    Ok(())
}

/// Locking a user ends that user's sessions on both relays within 2 s
/// and refuses new ones until unlocked; another user is unaffected; the
/// admin API refuses callers without a token and non-admins; drain takes
/// a backend out of balancing and enable brings it back.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_ends_a_users_sessions_on_every_relay_and_refuses_them_until_unlocked() -> Result<()>
{
    let fleet = Fleet::start(2, "").await?;
    let dev = [fleet.agent(0, CI_DEV).await?, fleet.agent(1, CI_DEV).await?];
    let reader = fleet.agent(0, CI_READONLY).await?;
    let reader1 = fleet.agent(1, CI_READONLY).await?;
    allowed(&dev[0], 1, "ci-dev via relay 0").await?;
    allowed(&dev[1], 1, "ci-dev via relay 1").await?;
    allowed(&reader, 1, "ci-readonly via relay 0").await?;

    // The API: no token 401, a non-admin's token 403, an admin's 200.
    let client = http()?;
    let sessions_url = format!("http://{}/v1/admin/sessions", fleet.relays[0].admin);
    let none = client.get(&sessions_url).send().await?;
    assert_eq!(none.status(), 401);
    let wrong = client
        .get(&sessions_url)
        .bearer_auth("not-the-token")
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    let reader_token = fleet.token(CI_READONLY).await?;
    let non_admin = client
        .get(&sessions_url)
        .bearer_auth(&reader_token)
        .send()
        .await?;
    assert_eq!(non_admin.status(), 403);
    let lock_url = format!("http://{}/v1/admin/locks", fleet.relays[0].admin);
    let denied = client
        .post(&lock_url)
        .bearer_auth(&reader_token)
        .body(r#"{"subject":"ci-dev"}"#)
        .send()
        .await?;
    assert_eq!(denied.status(), 403, "a non-admin may not lock");
    let dev_token = fleet.token(CI_DEV).await?;
    let listed: serde_json::Value = client
        .get(&sessions_url)
        .bearer_auth(&dev_token)
        .send()
        .await?
        .json()
        .await?;
    let subjects: Vec<&str> = listed
        .as_array()
        .context("sessions is not a list")?
        .iter()
        .filter_map(|s| s["subject"].as_str())
        .collect();
    assert!(
        subjects.contains(&CI_DEV) && subjects.contains(&CI_READONLY),
        "{listed}"
    );
    let refusals = fleet.relays[0].process.audit();
    assert!(refusals
        .iter()
        .any(|e| e["event"] == "admin_refused" && e["code"] == "missing"));
    assert!(refusals.iter().any(|e| e["event"] == "admin_refused"
        && e["code"] == "not_admin"
        && e["subject"] == CI_READONLY));

    // Lock ci-dev through relay 0's CLI: both relays end its sessions.
    let out = admin_cli(
        &fleet.relays[0],
        &fleet.token_file,
        &["lock", CI_DEV, "--reason", "laptop reported stolen"],
    )
    .await?;
    let outcome = stdout_json(&out)?;
    assert_eq!(outcome["shared"], true, "{outcome}");
    for relay in &fleet.relays {
        relay
            .process
            .wait_audit(
                "ci-dev's session ended by the lock",
                Duration::from_secs(2),
                |e| {
                    e["event"] == "session_close"
                        && e["subject"] == CI_DEV
                        && e["reason"] == "subject locked"
                },
            )
            .await?;
    }
    // Another user goes on.
    allowed(&reader, 1, "ci-readonly while ci-dev is locked").await?;
    for relay in &fleet.relays {
        assert!(
            !relay
                .process
                .audit()
                .iter()
                .any(|e| e["event"] == "session_close" && e["subject"] == CI_READONLY),
            "ci-readonly's session was ended"
        );
    }
    // New sessions of ci-dev are refused on both relays.
    for (i, relay) in fleet.relays.iter().enumerate() {
        let status = upgrade(&fleet, i, &dev_token).await?;
        assert_eq!(status, 403, "a locked user opened a session");
        relay
            .process
            .wait_audit("the locked user's refusal", Duration::from_secs(10), |e| {
                e["event"] == "session_refused" && e["code"] == "subject_locked"
            })
            .await?;
    }
    let locks = stdout_json(&admin_cli(&fleet.relays[1], &fleet.token_file, &["locks"]).await?)?;
    assert!(
        locks.as_array().is_some_and(|l| l
            .iter()
            .any(|x| x["subject"] == CI_DEV && x["reason"] == "laptop reported stolen")),
        "{locks}"
    );

    // Unlocked: a new session is let in again (on the other relay).
    stdout_json(&admin_cli(&fleet.relays[0], &fleet.token_file, &["unlock", CI_DEV]).await?)?;
    assert_eq!(upgrade(&fleet, 1, &dev_token).await?, 101);

    // Drain the only backend through relay 0: 503 there, and on relay 1
    // once the notice arrives; enable: 200 again on both.
    let node = fleet.node.addr().to_string();
    let backends =
        stdout_json(&admin_cli(&fleet.relays[0], &fleet.token_file, &["backends"]).await?)?;
    assert!(
        backends
            .as_array()
            .is_some_and(|b| b.iter().any(|x| x["service"] == "wiki"
                && x["backend"] == node.as_str()
                && x["healthy"] == true)),
        "{backends}"
    );
    stdout_json(
        &admin_cli(
            &fleet.relays[0],
            &fleet.token_file,
            &["drain", "wiki", &node],
        )
        .await?,
    )?;
    let (status, _, _) = get_wiki(&reader).await?;
    assert_eq!(status, 503, "a drained backend got a request");
    wiki_status(&reader1, 503, "the drain to reach relay 1").await?;
    let m = scrape(fleet.relays[0].admin).await?;
    assert_eq!(
        sample(
            &m,
            &format!(r#"gangway_relay_backend_up{{backend="{node}",service="wiki"}}"#)
        ),
        Some(0.0),
        "{m}"
    );
    stdout_json(
        &admin_cli(
            &fleet.relays[0],
            &fleet.token_file,
            &["enable", "wiki", &node],
        )
        .await?,
    )?;
    allowed(&reader, 1, "after enable").await?;
    wiki_status(&reader1, 200, "the enable to reach relay 1").await?;
    // A wrong token through the CLI: one clear line, exit 1.
    let bad = fleet.setup.dir.path().join("bad.token");
    std::fs::write(&bad, "wrong-token-wrong-token")?;
    let out = admin_cli(&fleet.relays[0], &bad, &["sessions"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    Ok(())
}

/// A bare tunnel upgrade with `token` on relay `i`: the status.
async fn upgrade(fleet: &Fleet, i: usize, token: &str) -> Result<u16> {
    let resp = tls_client(fleet)?
        .get(format!("{}/v1/tunnel", fleet.relays[i].process.url()))
        .bearer_auth(token)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await?;
    Ok(resp.status().as_u16())
}

/// An HTTPS client trusting the relays' certificate.
fn tls_client(fleet: &Fleet) -> Result<reqwest::Client> {
    let pem = std::fs::read(&fleet.setup.cert.cert)?;
    Ok(reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// One subject may hold `max_sessions_per_subject` sessions on a relay;
/// the next is 429 and counted as a refusal.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_per_subject_are_capped() -> Result<()> {
    let fleet = Fleet::start(1, "[limits]\nmax_sessions_per_subject = 1\n").await?;
    let _first = fleet.agent(0, CI_NOGROUPS).await?;
    let token = fleet.token(CI_NOGROUPS).await?;
    assert_eq!(upgrade(&fleet, 0, &token).await?, 429);
    let other = fleet.token(CI_DEV).await?;
    assert_eq!(
        upgrade(&fleet, 0, &other).await?,
        101,
        "another subject has its own cap"
    );
    let m = scrape(fleet.relays[0].admin).await?;
    assert_eq!(
        sample(
            &m,
            r#"gangway_relay_refusals_total{reason="too_many_sessions"}"#
        ),
        Some(1.0),
        "{m}"
    );
    Ok(())
}

/// `[redis] max_sessions_per_subject = 1`: a user's session on one relay
/// keeps them from opening another on the other relay (429, audit line),
/// another user is not counted with them, and the place comes back when
/// the first session ends.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_per_subject_are_capped_across_relays() -> Result<()> {
    // Bare keys right after `[redis]` belong to it.
    let fleet = Fleet::start(2, "max_sessions_per_subject = 1\n").await?;
    let mut first = fleet.agent(0, CI_NOGROUPS).await?;
    allowed(&first, 1, "ci-nogroups via relay 0").await?;
    let token = fleet.token(CI_NOGROUPS).await?;
    assert_eq!(
        upgrade(&fleet, 1, &token).await?,
        429,
        "a second session on the other relay"
    );
    fleet.relays[1]
        .process
        .wait_audit("the fleet-wide refusal", Duration::from_secs(10), |e| {
            e["event"] == "session_refused"
                && e["code"] == "too_many_sessions"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("across relays"))
        })
        .await?;
    let other = fleet.token(CI_DEV).await?;
    assert_eq!(
        upgrade(&fleet, 1, &other).await?,
        101,
        "another subject has its own cap"
    );
    // The first session ends: its place comes back.
    first.stop();
    let mut status = 0;
    for _ in 0..200 {
        status = upgrade(&fleet, 1, &token).await?;
        if status == 101 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status, 101,
        "the place did not come back after the first session ended"
    );
    Ok(())
}

/// After real traffic the metrics pass `promtool check metrics` and the
/// numbers moved as the traffic implies; every audit line also reached
/// rsyslog over TCP as an RFC 5424 message.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_and_audit_lines_reach_rsyslog() -> Result<()> {
    let promtool = require_program("promtool")?;
    let syslog = Rsyslog::start()?;
    let fleet = Fleet::start(
        1,
        &format!(
            "[audit.syslog]\naddress = \"{}\"\nfacility = \"local3\"\n",
            syslog.addr
        ),
    )
    .await?;
    let relay = &fleet.relays[0];
    let agent = fleet.agent(0, CI_DEV).await?;
    allowed(&agent, 3, "ci-dev").await?;
    // One request with a body: bytes up on the http service.
    let posted = http()?
        .post(format!("http://{}/submit", agent.addr("wiki")))
        .header(reqwest::header::AUTHORIZATION, agent.door_auth("wiki")?)
        .body("hello relay")
        .send()
        .await?;
    assert_eq!(posted.status(), 200);
    let posted_len = posted.bytes().await?.len();
    // One tcp exchange: bytes both ways.
    let mut s = tokio::net::TcpStream::connect(agent.addr("raw")).await?;
    let request = b"GET / HTTP/1.0\r\nHost: x\r\n\r\n";
    s.write_all(request).await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    ensure!(answer.starts_with(b"HTTP/1.1 200"));
    // Our side closes too: the stream ends (half-close is carried).
    drop(s);
    // One refused token.
    let resp = tls_client(&fleet)?
        .get(format!("{}/v1/catalog", relay.process.url()))
        .bearer_auth("not.a.jwt")
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    relay
        .process
        .wait_audit("the raw stream's close", Duration::from_secs(10), |e| {
            e["event"] == "stream_close" && e["service"] == "raw"
        })
        .await?;

    let m = scrape(relay.admin).await?;
    let mut check = tokio::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    check
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(m.as_bytes())
        .await?;
    let out = check.wait_with_output().await?;
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{m}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let get = |s: &str| sample(&m, s).with_context(|| format!("no {s} in\n{m}"));
    assert_eq!(get("gangway_relay_sessions")?, 1.0);
    assert_eq!(
        get(r#"gangway_relay_http_requests_total{service="wiki",status="200"}"#)?,
        4.0
    );
    assert_eq!(
        get(r#"gangway_relay_streams_opened_total{service="wiki"}"#)?,
        4.0
    );
    assert_eq!(
        get(r#"gangway_relay_bytes_total{direction="up",service="wiki"}"#)?,
        11.0
    );
    let wiki_down = get(r#"gangway_relay_bytes_total{direction="down",service="wiki"}"#)?;
    assert!(
        wiki_down >= 4.0 * posted_len as f64,
        "{wiki_down} bytes down for 4 answers of about {posted_len}"
    );
    assert_eq!(
        get(r#"gangway_relay_streams_opened_total{service="raw"}"#)?,
        1.0
    );
    assert_eq!(
        get(r#"gangway_relay_bytes_total{direction="up",service="raw"}"#)?,
        request.len() as f64
    );
    assert_eq!(
        get(r#"gangway_relay_bytes_total{direction="down",service="raw"}"#)?,
        answer.len() as f64
    );
    assert_eq!(
        get(r#"gangway_relay_auth_failures_total{code="malformed"}"#)?,
        1.0
    );
    assert_eq!(
        get(r#"gangway_relay_http_request_seconds_count{service="wiki"}"#)?,
        4.0
    );
    assert_eq!(
        get(r#"gangway_relay_stream_open_seconds_count{service="raw"}"#)?,
        1.0
    );
    assert_eq!(
        get(&format!(
            r#"gangway_relay_backend_up{{backend="{}",service="wiki"}}"#,
            fleet.node.addr()
        ))?,
        1.0
    );

    // Every audit line, in rsyslog's file too.
    let audit = relay.process.audit();
    let wanted = audit.len();
    let got = poll(
        "the audit lines in rsyslog's file",
        Duration::from_secs(10),
        || {
            let lines = syslog.messages();
            Ok((lines.len() >= wanted).then_some(lines))
        },
    )
    .await?;
    let http_line = got
        .iter()
        .find(|l| l.contains("\"event\":\"http_request\""))
        .with_context(|| format!("no http_request line in {got:#?}"))?;
    // <local3 (19) × 8 + info (6)>1 TIMESTAMP HOST gangway-relay PID http_request - {json}
    ensure!(http_line.starts_with("<158>1 "), "{http_line}");
    ensure!(
        http_line.contains(" gangway-relay ") && http_line.contains(" http_request - {"),
        "{http_line}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&http_line[http_line.find('{').context("no JSON")?..])?;
    assert_eq!(json["subject"], CI_DEV);
    ensure!(
        got.iter()
            .any(|l| l.contains(" auth_failed - ") && l.starts_with("<156>1 ")),
        "the auth failure is not a warning: {got:#?}"
    );
    if got.len() < wanted {
        bail!("{} of {wanted} lines reached rsyslog", got.len());
    }
    Ok(())
}
