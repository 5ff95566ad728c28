//! The local control API and `gangway env`, end to end with the real
//! binaries: a terminal acting on the running agent (`gangway up`), an
//! environment switch under load, and another user refused at the socket.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gangway_agent::control::{Bound, ControlServer, Failure, Handled, Handler, Progress, Request};
use gangway_agent::status::Phase;
use gangway_tests::gangway::bin_path;
use gangway_tests::peers::browser::Browser;
use gangway_tests::peers::process::{
    assert_success, require_program, start_on_free_port, startup_timeout, Process,
};
use gangway_tests::world::World;
use support::{addr_of, Control};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// `gangway env add|list|use|remove` edit the user config; no agent runs.
#[tokio::test(flavor = "multi_thread")]
async fn env_commands_edit_the_user_config() -> Result<()> {
    let home = tempfile::tempdir()?;
    let run = home.path().join("run");
    std::fs::create_dir_all(&run)?;
    let gangway = |args: &[&str]| {
        let mut c = std::process::Command::new(bin_path("gangway").unwrap());
        c.args(args)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_RUNTIME_DIR", &run)
            .env_remove("GANGWAY_CONTROL_SOCKET");
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, _) = gangway(&["env", "list"]);
    assert!(ok && out.contains("No environments"), "{out}");
    let (ok, out, err) = gangway(&["env", "add", "prod", "https://gangway.example.com"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Added prod (https://gangway.example.com)"),
        "{out}"
    );
    assert!(out.contains("It is the default environment."), "{out}");
    let (ok, _, err) = gangway(&[
        "env",
        "add",
        "staging",
        "https://gangway.staging.example.com:8443",
        "--ca-file",
        "/etc/gangway/staging-ca.pem",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = gangway(&["env", "add", "dev", "http://relay.example.com"]);
    assert!(!ok);
    assert!(err.contains("use https"), "{err}");
    let (ok, out, _) = gangway(&["env", "list"]);
    assert!(ok);
    assert!(out.contains("* prod "), "{out}");
    assert!(out.contains("  staging "), "{out}");
    let (ok, out, err) = gangway(&["env", "use", "staging"]);
    assert!(ok, "{err}");
    assert!(out.contains("Default environment is now staging"), "{out}");
    let (_, out, _) = gangway(&["env", "list"]);
    assert!(out.contains("* staging"), "{out}");
    let (ok, _, err) = gangway(&["env", "use", "nope"]);
    assert!(!ok);
    assert!(err.contains("no environment named \"nope\""), "{err}");
    let (ok, out, err) = gangway(&["env", "remove", "staging"]);
    assert!(ok, "{err}");
    assert!(out.contains("Removed staging"), "{out}");
    let text = std::fs::read_to_string(home.path().join(".config/gangway/config.toml"))?;
    assert!(!text.contains("staging"), "{text}");
    assert!(!text.contains("default_environment"), "{text}");
    // Nothing runs: status reads the keychain view (and there is none here).
    let (ok, _, err) = gangway(&["status"]);
    assert!(!ok);
    assert!(!err.contains("running"), "{err}");
    Ok(())
}

/// A handler that counts what reaches it.
struct Counting(Arc<AtomicUsize>);

impl Handler for Counting {
    fn handle(&self, _: Request, _: Progress) -> Handled {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            Err(Failure::new(
                gangway_agent::control::ErrorCode::Failed,
                "reached",
            ))
        })
    }
}

/// Another user (uid 65534 via `setpriv`) is refused by the peer-uid check
/// even when the socket's file mode would let them in; the owner is not.
#[tokio::test(flavor = "multi_thread")]
async fn control_socket_refuses_another_uid() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let setpriv = require_program("setpriv")?;
    if gangway_agent::control::current_uid() != 0 {
        // Switching users needs root; CI runs as root, so there it fails.
        ensure!(
            !gangway_tests::in_ci(),
            "this test switches to uid 65534 with setpriv and must run as root"
        );
        eprintln!("skipped: switching to another user needs root");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let path = dir.path().join("agent.sock");
    let Bound::Serving(server) = ControlServer::bind_with_mode(&path, 0o666).await? else {
        anyhow::bail!("socket taken")
    };
    let reached = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let task = server.serve(Arc::new(Counting(reached.clone())), stop.clone());

    let gangway = bin_path("gangway")?;
    let out = tokio::process::Command::new(&setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&gangway)
        .arg("status")
        .env("GANGWAY_CONTROL_SOCKET", &path)
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("none"))
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("belongs to another user (uid 0); you are uid 65534"),
        "{stderr}"
    );
    assert!(!out.status.success());
    assert_eq!(reached.load(Ordering::SeqCst), 0, "the handler was reached");

    // The owner gets through to the handler.
    let e = gangway_agent::control::Client::new(&path)
        .request(&Request::Status, |_, _| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reached"), "{e}");
    assert_eq!(reached.load(Ordering::SeqCst), 1);
    stop.cancel();
    task.await?;
    Ok(())
}

/// How a loaded stream ended.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// EOF (a FIN) after this many echoed bytes.
    Clean(u64),
    /// An error (e.g. reset).
    Broken(String),
}

/// Writes and reads back 16 KiB chunks until the agent ends the stream.
async fn echo_until_closed(addr: SocketAddr, started: Arc<AtomicUsize>) -> Ending {
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Ending::Broken(format!("connect: {e}")),
    };
    let mut echoed = 0u64;
    let mut k = 0u8;
    loop {
        let chunk: Vec<u8> = (0..16 * 1024).map(|i| (i as u8) ^ k).collect();
        if let Err(e) = s.write_all(&chunk).await {
            return Ending::Broken(format!("write: {e}"));
        }
        let mut got = 0;
        let mut buf = vec![0u8; chunk.len()];
        while got < chunk.len() {
            match s.read(&mut buf[got..]).await {
                Ok(0) => return Ending::Clean(echoed),
                Ok(n) => got += n,
                Err(e) => return Ending::Broken(format!("read: {e}")),
            }
        }
        if buf != chunk {
            return Ending::Broken("echo corrupted".into());
        }
        echoed += chunk.len() as u64;
        if echoed == chunk.len() as u64 {
            started.fetch_add(1, Ordering::SeqCst);
        }
        k = k.wrapping_add(1);
    }
}

/// `gangway up` on prod with streams busy; `gangway env use staging` from a
/// terminal: the old streams end with a FIN (no reset, no hang), the same
/// local port comes back for staging through the staging relay, and prod's
/// tokens are still in the keychain.
#[tokio::test(flavor = "multi_thread")]
async fn environment_switch_under_load() -> Result<()> {
    let mut w = World::start(&["prod", "staging"]).await?;
    w.write_config(&[])?;
    let browser = Browser::start().await?;
    w.login(&browser, "prod").await?;
    w.login(&browser, "staging").await?;
    drop(browser);

    // Both environments use the same local port, as 7990 would be: one
    // that was free, tried again on another if someone took it first.
    let (port, mut up) = tokio::task::block_in_place(|| {
        start_on_free_port("gangway up with a fixed echo port", |addr| {
            let port = addr.port();
            w.write_config(&[("echo", port)])?;
            let mut up =
                Process::spawn_captured("gangway up", w.gangway(&["up", "--env", "prod"])?)?;
            let taken = format!("port {port} is used by another program");
            let line = up.blocking_wait_line(
                "the echo listener",
                startup_timeout(Duration::from_secs(30)),
                |l| l.trim_start().starts_with("listening  echo") || l.contains(&taken),
            )?;
            ensure!(!line.contains(&taken), "{line}");
            Ok((port, up))
        })
    })?;
    let s = w
        .wait_status("prod connected", Duration::from_secs(20), |s| {
            s.phase == Phase::Connected
        })
        .await?;
    assert_eq!(s.status_line, "alice @ prod — connected");
    let addr = addr_of(&s, "echo").context("echo address")?;
    assert_eq!(addr.port(), port);

    // The socket is private: dir 0700, socket 0600.
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = w.runtime_dir().join("gangway");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("agent.sock")), 0o600);
    }

    // Load: six streams echoing as fast as they can.
    let started = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = (0..6)
        .map(|_| tokio::spawn(echo_until_closed(addr, started.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while started.load(Ordering::SeqCst) < 6 {
        ensure!(Instant::now() < deadline, "the streams did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = w
        .wait_status("six active streams", Duration::from_secs(10), |s| {
            s.services
                .iter()
                .any(|x| x.name == "echo" && x.stats.active_streams == 6)
        })
        .await?;
    let echo = busy.services.iter().find(|x| x.name == "echo").unwrap();
    assert!(
        echo.stats.bytes_up > 0 && echo.stats.bytes_down > 0,
        "{echo:?}"
    );
    assert!(echo.stats.open_rtt_ms.is_some(), "{echo:?}");
    // `gangway status` asks the running agent.
    let st = w.run(&["status"]).await?;
    assert_success("status", &st);
    assert!(st.stdout.contains("Agent: gangway up"), "{}", st.stdout);
    assert!(st.stdout.contains("Signed in as alice"), "{}", st.stdout);
    assert!(st.stdout.contains("6 active"), "{}", st.stdout);

    // Switch from a terminal.
    let t = Instant::now();
    let switched = w.run(&["env", "use", "staging"]).await?;
    assert_success("env use staging", &switched);
    assert!(
        switched.stdout.contains("Now using staging"),
        "{}",
        switched.stdout
    );
    for s in streams {
        let ending = tokio::time::timeout(Duration::from_secs(10), s)
            .await
            .context("a stream of the old environment hung")??;
        assert!(
            matches!(ending, Ending::Clean(n) if n > 0),
            "not a clean close: {ending:?}"
        );
    }
    let took = t.elapsed();
    eprintln!("switch: old streams closed within {took:?}");

    let s = w
        .wait_status("staging connected", Duration::from_secs(30), |s| {
            s.environment.as_deref() == Some("staging")
                && s.phase == Phase::Connected
                && addr_of(s, "echo").is_some()
        })
        .await?;
    assert_eq!(s.status_line, "alice @ staging — connected");
    assert!(s
        .environments
        .iter()
        .any(|e| e.name == "staging" && e.current));
    assert_eq!(addr_of(&s, "echo"), Some(addr), "the port was not reused");
    // The new listener carries through the staging relay.
    let mut c = TcpStream::connect(addr).await?;
    c.write_all(b"hello staging").await?;
    let mut buf = [0u8; 13];
    c.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"hello staging");
    drop(c);
    let staging_audit = w.relay("staging").audit();
    assert!(
        staging_audit
            .iter()
            .any(|e| e["event"] == "session_open" && e["subject"] == "alice"),
        "{staging_audit:?}"
    );
    w.relay("prod")
        .wait_audit("prod's session_close", Duration::from_secs(10), |e| {
            e["event"] == "session_close"
        })
        .await?;

    // Prod's sign-in is still in the keychain (status of a non-running
    // environment reads the keychain), and the choice was remembered.
    let prod = w.run(&["status", "--env", "prod"]).await?;
    assert_success("status --env prod", &prod);
    assert!(
        prod.stdout.contains("Signed in as alice"),
        "{}",
        prod.stdout
    );
    assert!(!prod.stdout.contains("Agent:"), "{}", prod.stdout);
    let list = w.run(&["env", "list"]).await?;
    assert!(list.stdout.contains("* staging"), "{}", list.stdout);
    assert!(
        list.stdout
            .contains("running in gangway up: alice @ staging — connected"),
        "{}",
        list.stdout
    );
    // An unknown environment is refused by the agent, which keeps going.
    let bad = w.run(&["env", "use", "nope"]).await?;
    assert!(!bad.status.success());
    assert!(up.alive());
    drop(up);
    Ok(())
}
