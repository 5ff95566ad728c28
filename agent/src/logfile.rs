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

/// The log file in [`log_dir`] (`Ok(None)` where the platform names no
/// directory), or why it cannot be used, as a line for standard error.
pub fn open_default() -> Result<Option<LogFile>, String> {
    let Some(dir) = log_dir() else {
        return Ok(None);
    };
    LogFile::open(&dir)
        .map(Some)
        .map_err(|e| format!("no log file in {}: {e}", dir.display()))
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
/// it in a `Mutex`). Nothing is created until the first line is written.
pub struct LogFile {
    path: PathBuf,
    /// The open file and its length, from the first write on.
    file: Option<(File, u64)>,
    max: u64,
}

impl LogFile {
    /// `dir/agent.log` (created, owner-only on Unix, at the first line).
    pub fn open(dir: &Path) -> io::Result<Self> {
        Self::open_bounded(dir, MAX_BYTES)
    }

    pub fn open_bounded(dir: &Path, max: u64) -> io::Result<Self> {
        Ok(LogFile {
            path: dir.join(FILE_NAME),
            file: None,
            max,
        })
    }

    /// The open file and its length.
    fn file(&mut self) -> io::Result<&mut (File, u64)> {
        let opened = match self.file.take() {
            Some(open) => open,
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let f = open_append(&self.path)?;
                let len = f.metadata()?.len();
                (f, len)
            }
        };
        Ok(self.file.insert(opened))
    }

    fn rotate(&mut self) -> io::Result<()> {
        let old = self.path.with_file_name(format!("{FILE_NAME}.1"));
        std::fs::rename(&self.path, old)?;
        self.file = Some((open_append(&self.path)?, 0));
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
        let max = self.max;
        let len = self.file()?.1;
        if len > 0 && len + buf.len() as u64 > max {
            self.rotate()?;
        }
        let (file, len) = self.file()?;
        let n = file.write(buf)?;
        *len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some((f, _)) => f.flush(),
            None => Ok(()),
        }
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
        let mut log = LogFile::open_bounded(dir.path(), 100).unwrap();
        writeln!(log, "x").unwrap();
        assert_eq!(log.file.as_ref().unwrap().1, cur + 2);
    }

    #[test]
    fn nothing_is_created_before_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("state/gangway");
        let mut log = LogFile::open(&logs).unwrap();
        log.flush().unwrap();
        assert!(!logs.exists());
        writeln!(log, "first").unwrap();
        assert!(logs.join(FILE_NAME).is_file());
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
