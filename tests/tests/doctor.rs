//! `gangway doctor` and `gangway bugreport` (issue 16), through the real
//! binary against real peers: a healthy setup (signed in through the
//! browser, `gangway up` running, git set up) is all PASS; a stopped relay,
//! a relay whose `Date` is off (HAProxy in front of it rewriting the
//! header) and a local port held by another program (this test) are each
//! named in one line; a bug report holds its sections and none of the
//! tokens, secrets and passwords seeded everywhere it reads from.
//!
//! Peers: npm `oidc-provider` (tests/peers/oidc), GNOME Keyring on a
//! private bus, headless Chromium for the sign-in, real `gangway-relay`
//! processes, HAProxy (Debian's) terminating TLS, git, ssh, tar.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use gangway_agent::status::Phase;
use gangway_tests::peers::browser::Browser;
use gangway_tests::peers::haproxy::Haproxy;
use gangway_tests::peers::oidc::CI_DEV;
use gangway_tests::peers::process::{
    assert_success, start_on_free_port, startup_timeout, Finished, Process,
};
use gangway_tests::world::World;
use serde_json::Value;
use support::Control;

// ---------------------------------------------------------------- helpers

/// `gangway doctor --json` (plus `extra` environment): the run and its report.
async fn doctor(w: &World, extra: &[(&str, &str)]) -> Result<(Finished, Value)> {
    let mut cmd = w.gangway(&["doctor", "--json"])?;
    cmd.envs(extra.iter().map(|(k, v)| (k, v)));
    let done = Process::spawn_captured("gangway doctor", &mut cmd)?
        .finish(Duration::from_secs(120))
        .await?;
    let report: Value = serde_json::from_str(&done.stdout)
        .with_context(|| format!("doctor's JSON: {}\n{}", done.stdout, done.stderr))?;
    Ok((done, report))
}

/// The check named `name` of a report.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == name))
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

/// (check, status) of every check that is not PASS.
fn not_passing(report: &Value) -> Vec<(String, String, String)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] != "PASS")
        .map(|c| {
            (
                c["check"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
                c["detail"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn exit_code(f: &Finished) -> Option<i32> {
    f.status.code()
}

/// A user config with one environment `name` at `relay`.
fn write_config(w: &World, name: &str, relay: &str, extra_top: &str) -> Result<PathBuf> {
    let dir = w.keychain.home().join(".config/gangway");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "{extra_top}default_environment = {name:?}\n\n[[environment]]\nname = {name:?}\nrelay = {relay:?}\nca_file = {:?}\n",
            w.cert.cert.to_str().unwrap()
        ),
    )?;
    Ok(path)
}

// ---------------------------------------------------------------- tests

/// Signed in through the browser, `gangway up` serving with bitbucket on a
/// fixed port, git set up: every check passes, in JSON and in text, and
/// the details say what was found (the ca_file root, the ping, the port
/// held by the agent itself).
#[tokio::test(flavor = "multi_thread")]
async fn doctor_is_all_pass_on_a_healthy_setup() -> Result<()> {
    let mut w = World::start(&["prod"]).await?;
    w.write_config(&[])?;
    let browser = Browser::start().await?;
    w.login(&browser, "prod").await?;
    drop(browser);

    let (port, _up) = tokio::task::block_in_place(|| {
        start_on_free_port("gangway up with a fixed bitbucket port", |addr| {
            let port = addr.port();
            w.write_config(&[("bitbucket", port)])?;
            let mut up =
                Process::spawn_captured("gangway up", w.gangway(&["up", "--env", "prod"])?)?;
            let taken = format!("port {port} is used by another program");
            let line = up.blocking_wait_line(
                "the bitbucket listener",
                startup_timeout(Duration::from_secs(30)),
                |l| l.trim_start().starts_with("listening  bitbucket") || l.contains(&taken),
            )?;
            ensure!(!line.contains(&taken), "{line}");
            Ok((port, up))
        })
    })?;
    w.wait_status("prod connected", Duration::from_secs(20), |s| {
        s.phase == Phase::Connected
    })
    .await?;
    assert_success("git setup", &w.run(&["git", "setup"]).await?);

    let (done, report) = doctor(&w, &[]).await?;
    eprintln!("gangway doctor (healthy) took {:?}", done.took);
    assert_eq!(
        not_passing(&report),
        Vec::<(String, String, String)>::new(),
        "{report:#}"
    );
    assert_eq!(exit_code(&done), Some(0), "{}", done.stderr);
    assert_eq!(report["environment"], "prod");
    assert_eq!(report["versions"]["gangway"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["versions"]["relay"], env!("CARGO_PKG_VERSION"));
    let tls = check(&report, "tls")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(tls.contains("from the environment's ca_file"), "{tls}");
    let tunnel = check(&report, "tunnel")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        tunnel.contains("control-channel ping") && tunnel.ends_with(" ms"),
        "{tunnel}"
    );
    let ports = check(&report, "local ports")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        ports.contains(&format!(
            "{port} (bitbucket) held by the running Gangway agent"
        )),
        "{ports}"
    );
    let token = check(&report, "token")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        token.contains("alice") && token.contains("developers"),
        "{token}"
    );
    // Every check has the four keys; a PASS has no fix.
    for c in report["checks"].as_array().unwrap() {
        let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["check", "detail", "fix", "status"], "{c}");
        assert!(c["fix"].is_null(), "{c}");
    }

    // The agent logs to its size-bounded file too (what bugreport reads), 0600.
    let log = w.keychain.home().join(".local/state/gangway/agent.log");
    let text = std::fs::read_to_string(&log).with_context(|| log.display().to_string())?;
    assert!(text.contains("listening"), "{text}");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&log)?.permissions().mode() & 0o777, 0o600);
    }

    // Plain text: one aligned line per check, all PASS.
    let text = w.run(&["doctor"]).await?;
    println!("{}", text.stdout);
    assert_success("doctor", &text);
    let lines: Vec<&str> = text.stdout.lines().skip(1).collect();
    assert_eq!(
        lines.len(),
        report["checks"].as_array().unwrap().len(),
        "{}",
        text.stdout
    );
    assert!(
        lines.iter().all(|l| l.starts_with("PASS  ")),
        "{}",
        text.stdout
    );
    // The details start in one column: after the longest check name.
    let width = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap().len())
        .max()
        .unwrap();
    for l in &lines {
        let (name, rest) = l[6..].split_at(width);
        assert!(
            !name.trim().is_empty() && rest.starts_with("  ") && !rest[2..].starts_with(' '),
            "not aligned: {l:?}\n{}",
            text.stdout
        );
    }
    Ok(())
}

/// The relay stopped: the `relay` check fails with one line naming the
/// address and the refusal, the checks that need it are not failed in its
/// place, and the exit code is 1.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_a_stopped_relay() -> Result<()> {
    let mut w = World::start(&["prod"]).await?;
    w.write_config(&[])?;
    let token = w.idp.client_credentials_token(CI_DEV).await?;
    let addr = w.relay("prod").addr;
    w.relays[0].1.kill();
    gangway_tests::peers::process::wait_until_refused(addr);

    let (done, report) = doctor(&w, &[("GANGWAY_TOKEN", &token)]).await?;
    assert_eq!(exit_code(&done), Some(1), "{report:#}");
    let failed: Vec<_> = not_passing(&report)
        .into_iter()
        .filter(|(_, s, _)| s == "FAIL")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let (name, _, detail) = &failed[0];
    assert_eq!(name, "relay");
    assert!(
        detail.contains(&format!(
            "cannot reach the relay at 127.0.0.1:{}",
            addr.port()
        )) && detail.contains("connection refused"),
        "{detail}"
    );
    assert!(!detail.contains('\n'));
    assert!(check(&report, "relay")["fix"]
        .as_str()
        .unwrap()
        .contains("relay"));
    // Those that need the relay say so.
    for c in ["tls", "clock", "tunnel"] {
        let d = check(&report, c)["detail"].as_str().unwrap().to_string();
        assert!(d.contains("relay failed"), "{c}: {d}");
    }
    // Text: the FAIL is one line, its fix the next.
    let text = Process::spawn_captured(
        "gangway doctor",
        w.gangway(&["doctor"])?.env("GANGWAY_TOKEN", &token),
    )?
    .finish(Duration::from_secs(120))
    .await?;
    assert_eq!(exit_code(&text), Some(1));
    let fails: Vec<&str> = text
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert_eq!(fails.len(), 1, "{}", text.stdout);
    assert!(fails[0].contains("connection refused"), "{}", fails[0]);
    Ok(())
}

/// HAProxy in front of the relay rewrites every `Date`: three hours ahead
/// is a FAIL, two minutes behind a WARN, each naming the offset; a `Date`
/// that is no date is a WARN saying so.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_a_skewed_relay_clock() -> Result<()> {
    let w = World::start(&["prod"]).await?;
    let pem = w.dir.path().join("haproxy.pem");
    std::fs::write(
        &pem,
        std::fs::read_to_string(&w.cert.cert)? + &std::fs::read_to_string(&w.cert.key)?,
    )?;
    let relay = w.relay("prod").addr;
    for (offset, ahead, status, said) in [
        (3 * 3600 + 30i64, true, "FAIL", "3 h 0 min ahead of"),
        (-120, false, "WARN", "behind"),
    ] {
        let at = if ahead {
            SystemTime::now() + Duration::from_secs(offset as u64)
        } else {
            SystemTime::now() - Duration::from_secs(offset.unsigned_abs())
        };
        let date = httpdate::fmt_http_date(at);
        let haproxy = Haproxy::start_date_rewriting(w.dir.path(), relay, &pem, &date)?;
        write_config(&w, "skewed", &haproxy.url(), "")?;
        let (done, report) = doctor(&w, &[]).await?;
        let clock = check(&report, "clock");
        assert_eq!(clock["status"], status, "{report:#}");
        let detail = clock["detail"].as_str().unwrap();
        assert!(
            detail.contains("the relay's clock is") && detail.contains(said),
            "{detail}"
        );
        if !ahead {
            // 120 s, give or take the second `Date` drops.
            assert!(
                ["1 min 59 s", "2 min 0 s", "2 min 1 s"]
                    .iter()
                    .any(|s| detail.contains(s)),
                "{detail}"
            );
        }
        assert!(clock["fix"].as_str().unwrap().contains("clock"));
        if status == "FAIL" {
            assert_eq!(exit_code(&done), Some(1));
        }
        // The rest of the path through HAProxy is fine.
        assert_eq!(check(&report, "tls")["status"], "PASS", "{report:#}");
    }
    // A `Date` that is not a date: said, not guessed at.
    let haproxy = Haproxy::start_date_rewriting(w.dir.path(), relay, &pem, "yesterday-ish")?;
    write_config(&w, "skewed", &haproxy.url(), "")?;
    let (_, report) = doctor(&w, &[]).await?;
    let clock = check(&report, "clock");
    assert_eq!(clock["status"], "WARN", "{report:#}");
    assert_eq!(
        clock["detail"],
        "the relay's Date header \"yesterday-ish\" is not an HTTP date"
    );
    Ok(())
}

/// The environment's `ca_file` is another CA than the one that signed the
/// relay's certificate: the tls check fails with the plain-words sentence
/// and its fix, naming how many certificates the relay presented.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_an_untrusted_relay_certificate() -> Result<()> {
    let w = World::start(&["prod"]).await?;
    // Another self-signed certificate, under another name (under the same
    // name webpki would find it and call the relay's signature invalid).
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Some Other CA");
    let other = gangway_tests::gangway::TestCert::from_params(params)?;
    let dir = w.keychain.home().join(".config/gangway");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "[[environment]]\nname = \"prod\"\nrelay = {:?}\nca_file = {:?}\n",
            w.relay("prod").url(),
            other.cert.to_str().unwrap()
        ),
    )?;
    let token = w.idp.client_credentials_token(CI_DEV).await?;
    let (done, report) = doctor(&w, &[("GANGWAY_TOKEN", &token)]).await?;
    assert_eq!(exit_code(&done), Some(1));
    let tls = check(&report, "tls");
    assert_eq!(tls["status"], "FAIL", "{report:#}");
    let detail = tls["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("1 certificate for ")
            && detail.contains("not signed by an authority this computer trusts"),
        "{detail}"
    );
    assert!(tls["fix"].as_str().unwrap().contains("--ca-file"), "{tls}");
    // What needs the relay's answer waits for TLS, and says so.
    for c in ["clock", "relay version", "identity provider", "tunnel"] {
        assert_eq!(
            check(&report, c)["detail"],
            "not checked: tls failed",
            "{c}"
        );
    }
    let failed: Vec<_> = not_passing(&report)
        .into_iter()
        .filter(|(_, s, _)| s == "FAIL")
        .map(|(c, _, _)| c)
        .collect();
    assert_eq!(failed, ["tls"], "{report:#}");
    Ok(())
}

/// A service's local port held by another program (this test's own
/// listener): the ports check fails naming this process's pid and
/// executable. (With a policy locking a setting, which the config check
/// names.)
#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_the_program_holding_a_busy_port() -> Result<()> {
    let w = World::start(&["prod"]).await?;
    let holder = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = holder.local_addr()?.port();
    w.write_config(&[("confluence", port)])?;
    let token = w.idp.client_credentials_token(CI_DEV).await?;
    // And the organisation locks a setting: the config check names it.
    let policy = w.dir.path().join("etc-gangway");
    std::fs::create_dir_all(policy.join("policy.d"))?;
    std::fs::write(
        policy.join("policy.d/00-corp.toml"),
        "start_at_login = true\n",
    )?;
    let (done, report) = doctor(
        &w,
        &[
            ("GANGWAY_TOKEN", &token),
            ("GANGWAY_POLICY_ROOT", policy.to_str().unwrap()),
        ],
    )
    .await?;
    assert_eq!(exit_code(&done), Some(1), "{report:#}");
    let config = check(&report, "config")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config.contains("1 setting(s) from policy (locked: start_at_login)"),
        "{config}"
    );
    let ports = check(&report, "local ports");
    assert_eq!(ports["status"], "FAIL", "{report:#}");
    let detail = ports["detail"].as_str().unwrap();
    let exe = std::env::current_exe()?;
    assert!(
        detail.contains(&format!(
            "{port} (confluence) busy: held by pid {} {}",
            std::process::id(),
            exe.display()
        )),
        "{detail}"
    );
    assert!(ports["fix"]
        .as_str()
        .unwrap()
        .contains("[environment.ports]"));
    assert_eq!(
        not_passing(&report)
            .iter()
            .filter(|(_, s, _)| s == "FAIL")
            .count(),
        1,
        "{report:#}"
    );
    drop(holder);
    Ok(())
}

/// Every file of an extracted archive under `dir`, with its text.
fn files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(files(&p)?);
        } else {
            out.push((
                p.clone(),
                String::from_utf8_lossy(&std::fs::read(&p)?).into_owned(),
            ));
        }
    }
    Ok(out)
}

/// Tokens, secrets and passwords seeded everywhere the report reads from
/// — the keychain (a real sign-in), the config file (a proxy password in a
/// URL), the agent's log (a bearer token, a refresh token, the door's
/// cookie and a random secret, a password in a URL) and the environment
/// (`GANGWAY_TOKEN`, a proxy URL with a password) — appear nowhere in the
/// extracted archive, while every section is there.
#[tokio::test(flavor = "multi_thread")]
async fn bugreport_holds_its_sections_and_no_secret() -> Result<()> {
    let mut w = World::start(&["prod"]).await?;
    let relay = w.relay("prod").url();
    let config_path = write_config(
        &w,
        "prod",
        &relay,
        "proxy = \"http://bob:Pr0xyPassw0rd-Seed@proxy.corp.test:3128\"\n",
    )?;
    let browser = Browser::start().await?;
    w.login(&browser, "prod").await?;
    drop(browser);
    let keychain_token = w.run(&["token", "--env", "prod"]).await?;
    assert_success("token", &keychain_token);
    let keychain_token = keychain_token.stdout.trim().to_string();
    ensure!(keychain_token.len() > 40, "no token from the keychain");
    let env_token = w.idp.client_credentials_token(CI_DEV).await?;
    // This device's DPoP key, when the sign-in made one: a private key, so
    // the report must not hold it either.
    let ns = gangway_agent::keychain::namespace_for(&url::Url::parse(&relay)?);
    let dpop_key = w
        .keychain
        .gangway_value(&ns, "dpop-key")?
        .unwrap_or_default();

    let opaque = "opaqueBearerSeed0123456789";
    let refresh = "refreshSeed-9f8e7d6c5b4a";
    let door = "Zq3V9xK-2bT8mN4pL7rS1wY6zA0cE5fG9hJ2kM3nP4Q";
    let url_pw = "UrlPassw0rdSeed";
    let env_proxy_pw = "EnvProxyPassSeed";
    let logs = w.keychain.home().join(".local/state/gangway");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(
        logs.join("agent.log"),
        format!(
            "2026-12-02T05:00:00Z  INFO seeded log line marker\n\
             2026-12-02T05:00:01Z DEBUG request headers: Authorization: Bearer {opaque}\n\
             2026-12-02T05:00:02Z DEBUG sent {{\"grant_type\":\"refresh_token\",\"refresh_token\":\"{refresh}\"}}\n\
             2026-12-02T05:00:03Z DEBUG Cookie: gangway_door={door}\n\
             2026-12-02T05:00:04Z DEBUG door secret {door} rotated\n\
             2026-12-02T05:00:05Z  WARN fetching https://carol:{url_pw}@git.example.com/x failed\n\
             2026-12-02T05:00:06Z DEBUG token {keychain_token}\n"
        ),
    )?;

    let out = w.dir.path().join("report.tar.gz");
    let mut cmd = w.gangway(&["bugreport", "--output", out.to_str().unwrap()])?;
    // A proxy URL with a password, and the loopback peers not through it.
    cmd.env("GANGWAY_TOKEN", &env_token)
        .env(
            "HTTPS_PROXY",
            format!("http://envuser:{env_proxy_pw}@proxy.corp.test:3128"),
        )
        .env("NO_PROXY", "127.0.0.1,localhost");
    let done = Process::spawn_captured("gangway bugreport", &mut cmd)?
        .finish(Duration::from_secs(120))
        .await?;
    assert_success("bugreport", &done);
    eprintln!(
        "gangway bugreport took {:?}, {} bytes",
        done.took,
        std::fs::metadata(&out)?.len()
    );
    assert!(done.stderr.contains("redacted"), "{}", done.stderr);
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out)?.permissions().mode() & 0o777, 0o600);
    }

    let dir = w.dir.path().join("extracted");
    std::fs::create_dir_all(&dir)?;
    let tar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&out)
        .arg("-C")
        .arg(&dir)
        .output()?;
    ensure!(
        tar.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let all = files(&dir)?;
    let seeds = [
        keychain_token.as_str(),
        env_token.as_str(),
        opaque,
        refresh,
        door,
        url_pw,
        env_proxy_pw,
        "Pr0xyPassw0rd-Seed",
        dpop_key.as_str(),
    ];
    for (path, text) in &all {
        for seed in seeds.iter().filter(|s| !s.is_empty()) {
            assert!(
                !text.contains(seed),
                "{} holds a seeded secret:\n{text}",
                path.display()
            );
        }
        // Not even a large piece of a token.
        for t in [&keychain_token, &env_token] {
            let sig = t.rsplit('.').next().unwrap();
            assert!(
                !text.contains(sig),
                "{} holds a token's signature",
                path.display()
            );
        }
    }

    // The sections.
    let read = |name: &str| -> String {
        all.iter()
            .find(|(p, _)| p.ends_with(Path::new("gangway-bugreport").join(name)))
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| {
                panic!(
                    "no {name} in {:?}",
                    all.iter().map(|a| &a.0).collect::<Vec<_>>()
                )
            })
    };
    let doctor: Value = serde_json::from_str(&read("doctor.json"))?;
    assert!(
        doctor["checks"].as_array().is_some_and(|c| c.len() > 10),
        "{doctor:#}"
    );
    assert_eq!(check(&doctor, "token")["status"], "PASS", "{doctor:#}");
    assert!(read("doctor.txt").contains("PASS  config"));
    let effective: Value = serde_json::from_str(&read("config-effective.json"))?;
    let proxy = effective["settings"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["key"] == "proxy"))
        .context("no proxy setting")?;
    assert_eq!(proxy["source"], "user_file");
    // The effective config shows the proxy without its credentials at all.
    assert_eq!(proxy["value"], "http://proxy.corp.test:3128");
    assert_eq!(effective["config_file"], config_path.to_str().unwrap());
    assert!(read("config.toml").contains("proxy.corp.test:3128"));
    let env = read("environment.txt");
    assert!(env.contains("GANGWAY_TOKEN is set"), "{env}");
    assert!(
        env.contains("HTTPS_PROXY=http://[redacted]@proxy.corp.test:3128"),
        "{env}"
    );
    let log = read("logs/agent.log");
    assert!(log.contains("seeded log line marker"), "{log}");
    assert!(log.contains("Authorization: [redacted]"), "{log}");
    let versions = read("versions.txt");
    assert!(
        versions.contains(&format!("gangway {}", env!("CARGO_PKG_VERSION"))),
        "{versions}"
    );
    assert!(versions.contains("git version"), "{versions}");
    assert!(versions.contains("OpenSSH"), "{versions}");
    assert!(read("agent-status.txt").contains("No Gangway agent is running"));
    Ok(())
}
