//! `gangway login`: sign in through the browser (or the device flow). A
//! running agent on the same environment signs in itself, so it resumes at
//! once and its tray shows the progress.

use std::process::ExitCode;
use std::time::Duration;

use gangway_agent::control::{Client, Request};
use gangway_agent::signin::{self, Method, SignedIn};
use gangway_agent::status::Snapshot;

use crate::args::LoginArgs;
use crate::output::{agent_label, frontend_name, print_signed_in};
use crate::running::{agent_for, ask};
use crate::target::Target;

/// The organisation may turn the device flow off (policy key
/// `allow_device_sign_in`): refused before any code is shown.
fn device_allowed(args: &LoginArgs) -> anyhow::Result<()> {
    let path = args
        .target
        .config
        .clone()
        .or_else(gangway_agent::config::user_config_path);
    let Some(path) = path else { return Ok(()) };
    let config = gangway_agent::config::AgentConfig::load(&path)?;
    if !config.settings.allow_device_sign_in {
        let origin = config
            .settings
            .locked(gangway_agent::policy::Key::AllowDeviceSignIn)
            .and_then(|s| s.origin.clone());
        return Err(gangway_agent::AgentError::Locked {
            what: "signing in with a code (--device) is turned off; it".into(),
            key: gangway_agent::policy::Key::AllowDeviceSignIn.name(),
            origin,
        }
        .into());
    }
    Ok(())
}

pub async fn run(args: LoginArgs) -> anyhow::Result<ExitCode> {
    if let Some(creds) = args.service.credentials()? {
        return service_account(&args, creds).await;
    }
    if args.device {
        device_allowed(&args)?;
    }
    if !args.device && !args.no_browser {
        if let Some((client, snap)) = agent_for(&args.target).await {
            if snap.interactive {
                return through_agent(&client, &snap, args.timeout).await;
            }
        }
    }
    let target = Target::resolve(&args.target)?;
    let egress = target.egress()?;
    // Before anyone types a password: can the tokens be kept at all?
    let keychain = target.keychain().await?;
    let label = target.label();
    let method = if args.device {
        Method::Device {
            show: Box::new(|p: &signin::DevicePrompt| {
                let url = p
                    .verification_uri_complete
                    .as_deref()
                    .unwrap_or(&p.verification_uri);
                eprintln!("To sign in to {label}, open this page on any device:");
                eprintln!("  {url}");
                eprintln!("and check that it shows the code: {}", p.user_code);
                eprintln!(
                    "(The code is valid for {} minutes.) Waiting for approval…",
                    p.expires_in.as_secs().div_ceil(60)
                );
            }),
        }
    } else {
        let browser = std::env::var("BROWSER").ok();
        let (timeout, open) = (args.timeout, !args.no_browser);
        Method::Browser {
            timeout: Duration::from_secs(timeout),
            show: Box::new(move |url: &url::Url| {
                eprintln!("Signing in to {label} in your browser.");
                eprintln!("If no browser opens, open this page:");
                eprintln!("  {url}");
                if open {
                    if let Err(e) = signin::open_browser(url.as_str(), browser.as_deref()) {
                        eprintln!("({e})");
                    }
                }
                eprintln!("Waiting up to {timeout} s for the sign-in to finish…");
            }),
        }
    };
    let done = signin::sign_in(&target.name(), &target.relay, egress, &keychain, method).await?;
    print_signed_in(&target.label(), &done);
    super::git::after_login().await;
    Ok(ExitCode::SUCCESS)
}

/// Has the running agent sign in; prints what it reports.
async fn through_agent(client: &Client, snap: &Snapshot, timeout: u64) -> anyhow::Result<ExitCode> {
    let label = agent_label(snap);
    eprintln!(
        "Signing in to {label} in your browser (through {}, pid {}).",
        frontend_name(snap.frontend),
        snap.pid
    );
    let request = Request::Login {
        timeout_secs: Some(timeout),
    };
    let done: SignedIn = ask(client, &request, |_, url| {
        if let Some(url) = url {
            eprintln!("If no browser opens, open this page:");
            eprintln!("  {url}");
            eprintln!("Waiting up to {timeout} s for the sign-in to finish…");
        }
    })
    .await?;
    print_signed_in(&label, &done);
    super::git::after_login().await;
    Ok(ExitCode::SUCCESS)
}

/// `--client-credentials`: checks the service account against the
/// environment's identity provider and the relay, and says who it is and
/// until when. Nothing is stored: `gangway up --client-credentials` (or
/// `gangway token --client-credentials`) fetches its own token, in memory.
async fn service_account(
    args: &LoginArgs,
    creds: gangway_agent::signin::ClientCredentials,
) -> anyhow::Result<ExitCode> {
    let target = Target::resolve(&args.target)?;
    let egress = target.egress()?;
    let id = creds.client_id.clone();
    let account = signin::ServiceAccount::new(target.relay.clone(), egress.clone(), creds);
    let token = account.current().await?;
    // The relay must accept it too (audience, issuer, groups).
    let catalog = gangway_agent::relay_api::RelayApi::new(target.relay.clone(), egress)?
        .catalog(&token.token)
        .await?;
    let claims = signin::UnverifiedClaims::peek(token.token.expose()).unwrap_or_default();
    let groups = claims
        .groups
        .map(|g| g.join(", "))
        .unwrap_or_else(|| "none".into());
    let until = token
        .expires_at
        .map(|t| {
            format!(
                "{} ({})",
                crate::output::format_time(t),
                crate::output::relative(t)
            )
        })
        .unwrap_or_else(|| "unknown".into());
    println!(
        "Service account {id} is accepted by {} ({} services; groups: {groups}); its token is valid until {until}.",
        target.label(),
        catalog.services.len(),
    );
    println!(
        "Nothing was stored: `gangway up --client-credentials` fetches its own token and renews it in memory."
    );
    Ok(ExitCode::SUCCESS)
}
