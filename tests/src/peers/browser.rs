//! A real browser for end-to-end tests: headless Chromium driven through
//! `chromedriver` (Debian `chromium` + `chromium-driver`) over WebDriver,
//! spoken with plain HTTP requests.
//!
//! chromedriver binds port 0 and reports its port. Chromium runs with a
//! fresh profile in a temporary directory. On drop the WebDriver session is
//! deleted (Chromium quits) and chromedriver's process group is killed, so
//! nothing outlives the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

use super::process::{require_program, startup_timeout, Process};

/// Chromium flags that work on these machines (see PEERS.md).
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// How long chromedriver may take to report its port on an idle machine
/// (stretched by [`startup_timeout`]).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What a page showed at the end of [`Browser::sign_in`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The CSS selector that matched (`#gangway-result`, `#success`, `#error`).
    pub selector: String,
    /// Its text.
    pub text: String,
    /// The page's URL.
    pub url: String,
}

/// A headless Chromium under chromedriver.
pub struct Browser {
    driver: Process,
    port: u16,
    session: Option<String>,
    http: reqwest::Client,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a Chromium session with a fresh profile.
    pub async fn start() -> Result<Self> {
        Self::start_with_args(&[]).await
    }

    /// [`Browser::start`] with more Chromium flags (e.g.
    /// `--host-resolver-rules=…` for names only a test's proxy knows).
    pub async fn start_with_args(extra: &[String]) -> Result<Self> {
        let chromedriver = require_program("chromedriver")?;
        let chromium = chromium_binary()?;
        let profile = tempfile::Builder::new()
            .prefix("gangway-chromium-")
            .tempdir()?;

        let mut cmd = Command::new(chromedriver);
        cmd.arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: Chromium and its helpers go with it.
            .process_group(0);
        let mut driver = Process::spawn("chromedriver", &mut cmd)?;
        const STARTED: &str = "ChromeDriver was started successfully on port ";
        let line = driver.blocking_wait_line("its port", startup_timeout(START_TIMEOUT), |l| {
            l.starts_with(STARTED)
        })?;
        let port = line[STARTED.len()..]
            .trim_end_matches('.')
            .trim()
            .parse::<u16>()
            .with_context(|| format!("no port in {line:?}"))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut browser = Browser {
            driver,
            port,
            session: None,
            http,
            _profile: profile,
        };
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.extend(extra.iter().cloned());
        args.push(format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        ));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    // Test peers use self-signed certificates.
                    "acceptInsecureCerts": true,
                    "goog:chromeOptions": {
                        "binary": chromium.to_str().context("chromium path")?,
                        "args": args,
                    }
                }
            }
        });
        let value = browser.command("POST", "/session", Some(caps)).await?;
        let id = value["sessionId"]
            .as_str()
            .with_context(|| format!("no sessionId in {value}"))?
            .to_string();
        browser.session = Some(id);
        Ok(browser)
    }

    fn session_path(&self, rest: &str) -> Result<String> {
        Ok(format!(
            "/session/{}{rest}",
            self.session.as_deref().context("no WebDriver session")?
        ))
    }

    /// Sends one WebDriver command; returns its `value`.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "WebDriver {method} {path}: {status}: {} {}",
                value["error"],
                value["message"]
            );
        }
        Ok(value)
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.command(
            "POST",
            &self.session_path("/url")?,
            Some(json!({ "url": url })),
        )
        .await
        .map(|_| ())
    }

    /// The current page's URL.
    pub async fn url(&self) -> Result<String> {
        let v = self
            .command("GET", &self.session_path("/url")?, None)
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The element matching `css`, if there is one now.
    pub async fn find(&self, css: &str) -> Result<Option<String>> {
        let path = self.session_path("/element")?;
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let resp = self
            .http
            .post(&url)
            .json(&json!({ "using": "css selector", "value": css }))
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if status == reqwest::StatusCode::NOT_FOUND && v["value"]["error"] == "no such element" {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("find {css}: {status}: {}", v["value"]);
        }
        // The element reference is the one value of a single-key object.
        let id = v["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .with_context(|| format!("no element reference in {v}"))?;
        Ok(Some(id.to_string()))
    }

    async fn element(&self, css: &str) -> Result<String> {
        match self.find(css).await? {
            Some(id) => Ok(id),
            None => bail!(
                "no element {css} on {}",
                self.url().await.unwrap_or_default()
            ),
        }
    }

    /// The visible text of the element matching `css`.
    pub async fn text(&self, css: &str) -> Result<String> {
        let id = self.element(css).await?;
        let v = self
            .command(
                "GET",
                &self.session_path(&format!("/element/{id}/text"))?,
                None,
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Types `text` into the field matching `css` (cleared first).
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let id = self.element(css).await?;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{id}/clear"))?,
            None,
        )
        .await?;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{id}/value"))?,
            Some(json!({ "text": text })),
        )
        .await
        .map(|_| ())
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        let id = self.element(css).await?;
        self.command(
            "POST",
            &self.session_path(&format!("/element/{id}/click"))?,
            None,
        )
        .await
        .map(|_| ())
    }

    /// Waits until the element `id` is no longer on the page (a navigation
    /// replaced the document).
    async fn wait_gone(&self, id: &str, timeout: Duration) -> Result<()> {
        let path = self.session_path(&format!("/element/{id}/name"))?;
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let deadline = Instant::now() + timeout;
        loop {
            let resp = self.http.get(&url).send().await?;
            let status = resp.status();
            let v: Value = resp.json().await?;
            let error = v["value"]["error"].as_str().unwrap_or_default();
            // ChromeDriver may also answer a node detached mid-navigation
            // with an "unknown error" naming it: gone all the same.
            let detached = v["value"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not belong to the document"));
            if matches!(error, "stale element reference" | "no such element") || detached {
                return Ok(());
            }
            if !status.is_success() {
                bail!("element {id}: {status}: {}", v["value"]);
            }
            if Instant::now() > deadline {
                bail!("element {id} was still on the page after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until one of `selectors` is on the page; returns which, with
    /// its text.
    pub async fn wait_for_any(&self, selectors: &[&str], timeout: Duration) -> Result<Outcome> {
        let deadline = Instant::now() + timeout;
        loop {
            for sel in selectors {
                if self.find(sel).await?.is_some() {
                    return Ok(Outcome {
                        selector: sel.to_string(),
                        text: self.text(sel).await.unwrap_or_default(),
                        url: self.url().await?,
                    });
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "none of {selectors:?} appeared within {timeout:?} on {}",
                    self.url().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fills the identity provider's login form (`#username`, `#password`,
    /// `#submit`) on the current page.
    pub async fn fill_login(&self, user: &str, password: &str) -> Result<()> {
        self.type_into("#username", user).await?;
        self.type_into("#password", password).await?;
        self.click("#submit").await
    }

    /// Goes through a sign-in that starts at `url` as `user`: the login
    /// form, the device-code confirmation if there is one, until the agent's
    /// result page (`#gangway-result`), the provider's device success page
    /// (`#success`) or an error (`#error`) shows.
    pub async fn sign_in(&self, url: &str, user: &str, password: &str) -> Result<Outcome> {
        self.goto(url).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut logged_in = false;
        loop {
            let o = self
                .wait_for_any(
                    &[
                        "#gangway-result",
                        "#success",
                        "#username",
                        "#error",
                        "#submit",
                    ],
                    Duration::from_secs(15),
                )
                .await?;
            // What is acted on goes stale when the next page loads.
            let acted_on = match o.selector.as_str() {
                "#username" if !logged_in => {
                    let id = self.element("#username").await?;
                    self.fill_login(user, password).await?;
                    logged_in = true;
                    id
                }
                "#username" | "#error" => return Ok(o),
                "#submit" => {
                    let id = self.element("#submit").await?;
                    self.click("#submit").await?;
                    id
                }
                _ => return Ok(o),
            };
            if Instant::now() > deadline {
                bail!("sign-in did not finish; last page {}", o.url);
            }
            self.wait_gone(&acted_on, Duration::from_secs(15))
                .await
                .with_context(|| format!("no new page after {} on {}", o.selector, o.url))?;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Quit Chromium through WebDriver (blocking: no runtime in drop).
        if let Some(id) = self.session.take() {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    s,
                    "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.port
                );
                read_http_response(&mut s);
            }
        }
        // Then the whole process group, in case a helper is left.
        let pgid = self.driver.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        self.driver.stop();
    }
}

/// Reads one HTTP response (headers, then `Content-Length` bytes): the
/// driver keeps the connection open, so reading to EOF would wait.
fn read_http_response(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The Chromium binary chromedriver should start.
fn chromium_binary() -> Result<PathBuf> {
    for p in ["/usr/lib/chromium/chromium", "/usr/bin/chromium"] {
        if std::path::Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    require_program("chromium")
}
