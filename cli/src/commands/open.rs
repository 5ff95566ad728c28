//! `gangway open SERVICE`: opens a web service (Confluence) in the browser
//! through the agent's local door: a one-time URL that sets the door's
//! cookie, so no password dialog ever shows.

use std::process::ExitCode;

use anyhow::Context;
use gangway_agent::control::{Client, OpenUrl, Request};
use gangway_agent::signin;

use crate::args::OpenArgs;
use crate::running::ask;

pub async fn run(args: OpenArgs) -> anyhow::Result<ExitCode> {
    let client = Client::default_path();
    crate::running::snapshot()
        .await
        .context("no Gangway agent is running: start the tray app or `gangway up` first")?;
    let request = Request::OpenUrl {
        service: args.service,
    };
    let open: OpenUrl = ask(&client, &request, |_, _| {}).await?;
    if args.print {
        println!("{}", open.url);
        return Ok(ExitCode::SUCCESS);
    }
    let browser = std::env::var("BROWSER").ok();
    signin::open_browser(&open.url, browser.as_deref()).map_err(anyhow::Error::msg)?;
    eprintln!(
        "Opened {} in your browser (through a one-time link, valid for a minute).",
        open.display_name
    );
    Ok(ExitCode::SUCCESS)
}
