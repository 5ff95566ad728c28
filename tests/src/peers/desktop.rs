//! A desktop for the tray app's end-to-end tests, and the small backends
//! those tests put behind the relay.
//!
//! - [`Display`]: `Xvfb` on a display number it picks itself (`-displayfd`,
//!   so no fixed display and no race), plus `trayer` as the tray host
//!   (XEmbed: with no StatusNotifier watcher on the bus, libayatana falls
//!   back to a GTK status icon that trayer embeds). Screenshots with
//!   ImageMagick's `import`, window lookups and clicks with `xdotool`, and
//!   a window manager's close button (`WM_DELETE_WINDOW`) sent over X11.
//! - [`EchoServer`]: a TCP echo backend (a `tcp` service under load).
//! - [`HttpStub`]: answers every HTTP request with a fixed page (a
//!   Confluence or Bitbucket stand-in for `http` services).
//!
//! Everything stops on drop: processes by their pid, threads with their
//! listener.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::process::{blocking_poll, require_program, startup_timeout, Process};

/// How long Xvfb and trayer may take to come up on an idle machine
/// (stretched by [`startup_timeout`]).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A virtual X display with a tray host.
pub struct Display {
    // Field order: trayer goes before the X server.
    trayer: Option<Process>,
    _xvfb: Process,
    /// `:N`
    pub name: String,
    pub width: u32,
    pub height: u32,
}

impl Display {
    /// Starts `Xvfb` at `width`x`height` on a free display.
    pub fn start(width: u32, height: u32) -> Result<Self> {
        let xvfb = require_program("Xvfb")?;
        require_program("xdotool")?;
        require_program("import")?;
        let mut cmd = Command::new(xvfb);
        cmd.args(["-displayfd", "1", "-nolisten", "tcp", "-screen", "0"])
            .arg(format!("{width}x{height}x24"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = Process::spawn("Xvfb", &mut cmd)?;
        let n = child.blocking_wait_line(
            "its display number",
            startup_timeout(START_TIMEOUT),
            |l| !l.trim().is_empty(),
        )?;
        let name = format!(":{}", n.trim());
        let mut d = Display {
            trayer: None,
            _xvfb: child,
            name,
            width,
            height,
        };
        // Our server, not one that is going away on the same number: it
        // must be alive and answer with exactly our geometry.
        let want = format!("{width} {height}");
        let what = format!("the X server on {} to answer", d.name);
        blocking_poll(&what, startup_timeout(START_TIMEOUT), || {
            d._xvfb.check_alive()?;
            let geometry = d.xdotool(&["getdisplaygeometry"]).unwrap_or_default();
            Ok((geometry.trim() == want).then_some(()))
        })?;
        Ok(d)
    }

    /// `DISPLAY` for programs that should use this display.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![("DISPLAY", self.name.clone().into())]
    }

    /// Starts `trayer` (docked top right) with `env` (its D-Bus session)
    /// and waits until its window exists.
    pub fn start_tray_host(&mut self, env: &[(&'static str, OsString)]) -> Result<()> {
        let trayer = require_program("trayer")?;
        let mut cmd = Command::new(trayer);
        cmd.args([
            "--edge",
            "top",
            "--align",
            "right",
            "--widthtype",
            "request",
            "--height",
            "32",
            "--transparent",
            "false",
            "--tint",
            "0x1f2430",
            "--SetDockType",
            "true",
        ])
        .envs(env.iter().cloned())
        .env("DISPLAY", &self.name);
        // Its output is kept: when its window does not come, it says why
        // (or that it exited).
        // trayer sometimes exits at once with "cannot open display" on a
        // display that xdotool has just talked to (seen under load, cause
        // not found): such an early exit starts it again, within the same
        // deadline; every exit is logged with trayer's own words.
        let what = format!("trayer's window on {}", self.name);
        let mut trayer = Process::spawn_captured("trayer", &mut cmd)?;
        let mut starts = 1;
        let shown = blocking_poll(&what, startup_timeout(START_TIMEOUT), || {
            if let Err(e) = trayer.check_alive() {
                if starts >= 3 {
                    return Err(e);
                }
                eprintln!("trayer exited early ({e:#}); starting it again");
                trayer = Process::spawn_captured("trayer", &mut cmd)?;
                starts += 1;
                return Ok(None);
            }
            let windows = self.windows_of_class("trayer").unwrap_or_default();
            Ok((!windows.is_empty()).then_some(()))
        });
        let shown = shown.with_context(|| format!("trayer's output:\n{}", trayer.output()));
        self.trayer = Some(trayer);
        shown
    }

    /// Runs `xdotool ARGS` on this display; its stdout.
    pub fn xdotool(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("xdotool")
            .args(args)
            .env("DISPLAY", &self.name)
            .stdin(Stdio::null())
            .output()
            .context("running xdotool")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ids(text: &str) -> Vec<u32> {
        text.split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    }

    /// Windows whose class is `class`.
    pub fn windows_of_class(&self, class: &str) -> Result<Vec<u32>> {
        Ok(Self::ids(&self.xdotool(&["search", "--class", class])?))
    }

    /// Mapped (visible) windows whose title matches the regex `title`.
    pub fn visible_windows(&self, title: &str) -> Result<Vec<u32>> {
        Ok(Self::ids(&self.xdotool(&[
            "search",
            "--onlyvisible",
            "--name",
            title,
        ])?))
    }

    /// Waits until a visible window titled `title` exists; returns it.
    pub fn wait_for_window(&self, title: &str, timeout: Duration) -> Result<u32> {
        let what = format!("a visible window titled {title:?} on {}", self.name);
        blocking_poll(&what, timeout, || {
            Ok(self.visible_windows(title)?.into_iter().next())
        })
    }

    /// Clicks at (`x`, `y`) with mouse `button`.
    pub fn click(&self, x: u32, y: u32, button: u8) -> Result<()> {
        self.xdotool(&[
            "mousemove",
            &x.to_string(),
            &y.to_string(),
            "click",
            &button.to_string(),
        ])?;
        Ok(())
    }

    /// Where the (first) tray icon sits: trayer is docked top right and
    /// as wide as its icons.
    pub fn tray_icon_center(&self) -> (u32, u32) {
        (self.width - 16, 16)
    }

    /// The size of `window` (`xdotool getwindowgeometry`).
    pub fn window_size(&self, window: u32) -> Result<(u32, u32)> {
        let out = self.xdotool(&["getwindowgeometry", &window.to_string()])?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Geometry: "))
            .and_then(|g| g.split_once('x'))
            .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)))
            .with_context(|| format!("no geometry for window {window} in {out:?}"))
    }

    /// Resizes `window` to `width`x`height` and waits until it has that size.
    pub fn resize_window(&self, window: u32, width: u32, height: u32) -> Result<()> {
        let id = window.to_string();
        self.xdotool(&["windowsize", &id, &width.to_string(), &height.to_string()])?;
        let what = format!("window {window} to be {width}x{height}");
        blocking_poll(&what, startup_timeout(START_TIMEOUT), || {
            Ok((self.window_size(window)? == (width, height)).then_some(()))
        })
    }

    /// Saves a screenshot of `window` (or the whole screen) as PNG once
    /// what is drawn has settled: two captures in a row show the same
    /// pixels (a window just mapped or resized may still be painting).
    pub fn settled_screenshot(&self, window: Option<u32>, path: &Path) -> Result<()> {
        let mut last: Option<Vec<u8>> = None;
        blocking_poll(
            "two identical screenshots in a row",
            startup_timeout(START_TIMEOUT),
            || {
                self.screenshot(window, path)?;
                let now = std::fs::read(path)?;
                let same = last.as_ref() == Some(&now);
                last = Some(now);
                Ok(same.then_some(()))
            },
        )
    }

    /// Saves a screenshot of `window` (or the whole screen) as PNG, with no
    /// time stamps in it (the same pixels give the same file).
    pub fn screenshot(&self, window: Option<u32>, path: &Path) -> Result<()> {
        let target = window
            .map(|w| w.to_string())
            .unwrap_or_else(|| "root".into());
        let out = Command::new("import")
            .args(["-display", &self.name, "-window", &target])
            .args(["-define", "png:exclude-chunks=date,time"])
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .context("running import (ImageMagick)")?;
        if !out.status.success() {
            bail!(
                "import failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Asks `window` to close the way a window manager's close button does
    /// (a `WM_DELETE_WINDOW` client message).
    pub fn close_window(&self, window: u32) -> Result<()> {
        use x11rb::connection::Connection;
        use x11rb::protocol::xproto::{
            ClientMessageEvent, ConnectionExt, EventMask, CLIENT_MESSAGE_EVENT,
        };
        let (conn, _) = x11rb::connect(Some(&self.name)).context("connecting to X")?;
        let protocols = conn.intern_atom(false, b"WM_PROTOCOLS")?.reply()?.atom;
        let delete = conn.intern_atom(false, b"WM_DELETE_WINDOW")?.reply()?.atom;
        let event = ClientMessageEvent {
            response_type: CLIENT_MESSAGE_EVENT,
            format: 32,
            sequence: 0,
            window,
            type_: protocols,
            data: [delete, x11rb::CURRENT_TIME, 0, 0, 0].into(),
        };
        conn.send_event(false, window, EventMask::NO_EVENT, event)?;
        conn.flush()?;
        Ok(())
    }

    /// The text on the X clipboard (`xclip`), as a paste would see it.
    pub fn clipboard(&self) -> Result<String> {
        require_program("xclip")?;
        let out = Command::new("xclip")
            .args(["-o", "-selection", "clipboard"])
            .env("DISPLAY", &self.name)
            .stdin(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Checks a screenshot: a PNG of the expected size that is not one flat colour.
pub fn check_png(path: &Path, min_width: u32, min_height: u32) -> Result<()> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < 24 || &bytes[1..4] != b"PNG" {
        bail!("{} is not a PNG", path.display());
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into()?);
    if w < min_width || h < min_height {
        bail!(
            "{} is {w}x{h}, expected at least {min_width}x{min_height}",
            path.display()
        );
    }
    // A flat image compresses to almost nothing.
    if bytes.len() < 8 * 1024 {
        bail!("{} looks empty ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}

/// Stops an accept loop when dropped.
struct Stopper {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept call.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn accept_loop(
    name: &'static str,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) -> Result<(SocketAddr, Stopper)> {
    let l = TcpListener::bind("127.0.0.1:0").with_context(|| format!("binding {name}"))?;
    let addr = l.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            if s.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(c) = conn {
                let h = handle.clone();
                std::thread::spawn(move || h(c));
            }
        }
    });
    Ok((addr, Stopper { stop, addr }))
}

/// A TCP echo server.
pub struct EchoServer {
    pub addr: SocketAddr,
    _stop: Stopper,
}

impl EchoServer {
    pub fn start() -> Result<Self> {
        let (addr, stop) = accept_loop("echo server", |mut c| {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        })?;
        Ok(EchoServer { addr, _stop: stop })
    }
}

/// An HTTP server answering every request with `body` (and closing).
pub struct HttpStub {
    pub addr: SocketAddr,
    _stop: Stopper,
}

impl HttpStub {
    pub fn start(body: &'static str) -> Result<Self> {
        let (addr, stop) = accept_loop("http stub", move |mut c| {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        })?;
        Ok(HttpStub { addr, _stop: stop })
    }
}
