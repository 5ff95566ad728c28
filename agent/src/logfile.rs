//! The agent's log file, for `gangway bugreport`: the same lines as on
//! standard error, appended to `agent.log` under the platform's state
//! directory (`$XDG_STATE_HOME/gangway` on Linux, the cache directory
//! elsewhere), size-bounded: when it would pass [`MAX_BYTES`] it becomes
//! `agent.log.1` (replacing the previous one) and a new file starts, so
//! the two never hold more than twice that.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Largest size of one log file.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// The file name of the current log.
pub const FILE_NAME: &str = "agent.log";

/// Where the agent's log files go.
pub fn log_dir() -> Option<PathBuf> {
    let dirs = directories::ProjectDirs::from("com", "Gangway", "gangway")?;
    Some(
        dirs.state_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dirs.cache_dir().join("logs")),
    )
}

/// The log files, newest last (`agent.log.1`, `agent.log`), that exist.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    [format!("{FILE_NAME}.1"), FILE_NAME.to_string()]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect()
}

/// An appending, rotating log file (a `Write` for a tracing layer; wrap
/// it in a `Mutex`).
pub struct LogFile {
    path: PathBuf,
    file: File,
    len: u64,
    max: u64,
}

impl LogFile {
    /// Opens (creating) `dir/agent.log`, owner-only on Unix.
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_bounded(dir, MAX_BYTES)
    }

    pub fn open_bounded(dir: &Path, max: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let file = open_append(&path)?;
        let len = file.metadata()?.len();
        Ok(LogFile {
            path,
            file,
            len,
            max,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let old = self.path.with_file_name(format!("{FILE_NAME}.1"));
        std::fs::rename(&self.path, old)?;
        self.file = open_append(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len > 0 && self.len + buf.len() as u64 > self.max {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The last `max` bytes of `path` (from a line start), as text.
pub fn tail(path: &Path, max: u64) -> io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        if let Some(i) = text.find('\n') {
            text.drain(..=i);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_bound_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::open_bounded(dir.path(), 100).unwrap();
        for i in 0..30 {
            writeln!(log, "line {i:02} of the log").unwrap();
        }
        let cur = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        let old = std::fs::metadata(dir.path().join("agent.log.1"))
            .unwrap()
            .len();
        assert!(cur <= 100 && old <= 100, "{cur} {old}");
        assert_eq!(files(dir.path()).len(), 2);
        let last = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(last.ends_with("line 29 of the log\n"), "{last}");
        // A reopened log goes on from its size.
        drop(log);
        let log = LogFile::open_bounded(dir.path(), 100).unwrap();
        assert_eq!(log.len, cur);
    }

    #[test]
    fn tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(tail(&p, 10).unwrap(), "third\n");
        assert_eq!(tail(&p, 1000).unwrap(), "first line\nsecond line\nthird\n");
    }
}
