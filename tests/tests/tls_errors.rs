//! TLS and network failures reach the user in plain words, with what to do:
//! the real `gangway login` against the real relay serving a bad
//! certificate (a CA certificate used as the server's — the finding of the
//! corporate-network issue —, an expired one, one for another name, one
//! nobody trusts) or nothing at all.

use std::time::Duration;

use anyhow::Result;
use gangway_tests::gangway::{
    gangway_command, write_relay_config, IdentitySpec, RelayProcess, ServiceSpec, TestCert,
};
use gangway_tests::peers::keychain::SecretService;
use gangway_tests::peers::process::Process;

/// A relay serving `cert`; its identity provider is never reached.
fn relay(cert: &TestCert, dir: &std::path::Path) -> Result<RelayProcess> {
    let config = write_relay_config(
        dir,
        "127.0.0.1:0".parse()?,
        cert,
        &IdentitySpec {
            issuer: "https://127.0.0.1:9",
            audience: "gangway",
            leeway_secs: 30,
            jwks_file: None,
        },
        &[ServiceSpec {
            name: "echo",
            kind: "tcp",
            backends: vec!["127.0.0.1:9".into()],
            allow_groups: None,
        }],
    )?;
    RelayProcess::start(&config)
}

/// `gangway login` against `url` (trusting `ca`), with a real keychain so
/// that the sign-in gets as far as the relay: its stderr, after it failed.
async fn login_error(url: &str, ca: Option<&std::path::Path>) -> Result<String> {
    let keychain = SecretService::start()?;
    let mut args = vec!["login", "--no-browser", "--relay", url];
    let ca_s;
    if let Some(ca) = ca {
        ca_s = ca.display().to_string();
        args.extend(["--ca-file", ca_s.as_str()]);
    }
    let mut cmd = gangway_command(&args)?;
    cmd.envs(keychain.env());
    let run = Process::spawn_captured("gangway login", cmd)?;
    let done = run.finish(Duration::from_secs(30)).await?;
    assert!(!done.status.success(), "login succeeded: {}", done.stdout);
    Ok(done.stderr)
}

fn params(names: &[&str]) -> Result<rcgen::CertificateParams> {
    Ok(rcgen::CertificateParams::new(
        names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )?)
}

fn plain(stderr: &str, sentence: &str, fix: &str) {
    assert!(stderr.contains(sentence), "no {sentence:?} in:\n{stderr}");
    assert!(stderr.contains(fix), "no fix {fix:?} in:\n{stderr}");
    for raw in [
        "OtherError",
        "InvalidCertificate",
        "CaUsedAsEndEntity",
        "os error",
    ] {
        assert!(
            !stderr.contains(raw),
            "library words {raw:?} reached the user:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_certificate_used_as_the_relays_is_said_plainly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut p = params(&["127.0.0.1", "localhost"])?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = TestCert::from_params(p)?;
    let r = relay(&cert, dir.path())?;
    let err = login_error(&r.url(), Some(&cert.cert)).await?;
    plain(
        &err,
        "the relay presents a CA certificate as its own certificate",
        "issue a server certificate (basicConstraints CA:FALSE",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_wrong_name_and_untrusted_certificates_are_said_plainly() -> Result<()> {
    let dir = tempfile::tempdir()?;

    let mut p = params(&["127.0.0.1", "localhost"])?;
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = TestCert::from_params(p)?;
    let d = dir.path().join("expired");
    std::fs::create_dir_all(&d)?;
    let r = relay(&expired, &d)?;
    let err = login_error(&r.url(), Some(&expired.cert)).await?;
    plain(
        &err,
        "the relay's certificate has expired",
        "check this computer's date and time",
    );
    drop(r);

    let other = TestCert::from_params(params(&["relay.other.example"])?)?;
    let d = dir.path().join("other");
    std::fs::create_dir_all(&d)?;
    let r = relay(&other, &d)?;
    let err = login_error(&r.url(), Some(&other.cert)).await?;
    plain(
        &err,
        "the relay's certificate is for another name than the one in the relay URL",
        "check the relay URL",
    );
    drop(r);

    // A certificate this computer does not trust (no --ca-file).
    let good = TestCert::new()?;
    let d = dir.path().join("untrusted");
    std::fs::create_dir_all(&d)?;
    let r = relay(&good, &d)?;
    let err = login_error(&r.url(), None).await?;
    plain(
        &err,
        "not signed by an authority this computer trusts",
        "--ca-file CA.pem",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_that_does_not_answer_is_said_plainly() -> Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = closed.local_addr()?.port();
    drop(closed);
    let err = login_error(&format!("https://127.0.0.1:{port}"), None).await?;
    plain(
        &err,
        "nothing answers at that address (connection refused)",
        "check the relay URL and that the relay runs",
    );
    Ok(())
}
