//! What the figures were measured on: the machine and the tools' versions.

use std::path::Path;
use std::process::Command;

/// CPU count, CPU model, kernel and load average.
pub fn describe() -> Vec<(String, String)> {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get().to_string())
        .unwrap_or_else(|_| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    vec![
        ("nproc".into(), nproc),
        ("CPU".into(), cpu),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
        ("load average at start".into(), loadavg()),
    ]
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// First line a program prints for `args` (stdout, else stderr), whatever
/// its exit code (`wrk --version` exits 1).
pub fn version_of(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = if out.stdout.iter().any(|b| !b.is_ascii_whitespace()) {
                out.stdout
            } else {
                out.stderr
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("?")
                .trim()
                .to_string()
        }
        Err(e) => format!("not available ({e})"),
    }
}

/// Finds `name` on PATH, then in `~/.cargo/bin`.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The workspace's git revision, noting uncommitted changes to the code
/// that is measured (agent, relay, transport, wire).
pub fn source_revision(workspace: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(rev) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    match git(&[
        "status",
        "--porcelain",
        "--",
        "agent",
        "relay",
        "transport",
        "wire",
    ]) {
        Some(s) if !s.is_empty() => format!(
            "git {rev} plus uncommitted changes in {} file(s) of agent/relay/transport/wire",
            s.lines().count()
        ),
        _ => format!("git {rev}"),
    }
}
