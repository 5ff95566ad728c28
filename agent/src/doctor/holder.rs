//! Which program holds a local TCP port: the listening socket's uid and
//! inode from `/proc/net/tcp{,6}`, then the process whose `/proc/PID/fd`
//! has that socket (`socket:[INODE]`), and its executable. Linux only;
//! another user's processes are not visible without privileges, and then
//! only the uid is known.

/// A listening socket on the port and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub uid: u32,
    /// The process with the socket open, if it could be seen.
    pub pid: Option<u32>,
    pub exe: Option<String>,
}

/// One line of `/proc/net/tcp`: a socket listening on `port`, with its
/// uid and inode.
fn listening(table: &str, port: u16) -> Option<(u32, u64)> {
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let Some((_, p)) = f[1].rsplit_once(':') else {
            continue;
        };
        // State 0A: LISTEN.
        if u16::from_str_radix(p, 16).ok() != Some(port) || f[3] != "0A" {
            continue;
        }
        let (Ok(uid), Ok(inode)) = (f[7].parse(), f[9].parse()) else {
            continue;
        };
        return Some((uid, inode));
    }
    None
}

/// The holder of `port`, if a listening socket on it is found.
#[cfg(target_os = "linux")]
pub fn holder(port: u16) -> Option<Holder> {
    let (uid, inode) = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|t| listening(&t, port))?;
    let wanted = format!("socket:[{inode}]");
    let pid = std::fs::read_dir("/proc").ok()?.flatten().find_map(|d| {
        let pid: u32 = d.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(d.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
            .then_some(pid)
    });
    let exe = pid.and_then(|p| {
        std::fs::read_link(format!("/proc/{p}/exe"))
            .ok()
            .map(|e| e.display().to_string())
    });
    Some(Holder { uid, pid, exe })
}

#[cfg(not(target_os = "linux"))]
pub fn holder(_port: u16) -> Option<Holder> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F41 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn finds_the_listening_socket_only() {
        assert_eq!(listening(TABLE, 0x1f40), Some((1000, 4242)));
        // Established, not listening.
        assert_eq!(listening(TABLE, 0x1f41), None);
        assert_eq!(listening(TABLE, 1), None);
        assert_eq!(listening("garbage\n1 2 3", 1), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn names_this_process_for_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = holder(port).expect("our listener is in /proc/net/tcp");
        assert_eq!(h.pid, Some(std::process::id()));
        assert_eq!(h.uid, crate::door::peer::own_uid());
        let exe = std::env::current_exe().unwrap();
        assert_eq!(h.exe.as_deref(), Some(exe.to_str().unwrap()));
    }
}
