//! Who is on the other end of a loopback connection: the uid that owns the
//! caller's socket, asked from the kernel right after `accept`, before a
//! byte goes into the tunnel.
//!
//! Linux: one netlink `sock_diag` request (`SOCK_DIAG_BY_FAMILY`,
//! INET_DIAG_REQ_V2, not a dump) naming the exact 4-tuple of the caller's
//! socket; the kernel finds it by hash (no walk over every socket, unlike
//! reading `/proc/net/tcp`, whose cost grows with the machine's socket
//! count and which is text to parse) and answers with its owner's uid and
//! inode. One lookup costs about 7 µs in a release build (a reused
//! socket per thread: one `sendto`, one `recvfrom`), against the ~174 µs
//! of tunnel CPU a new connection costs anyway (BENCHMARKS.md); the
//! `lookup_cost` test prints it for the build at hand.
//!
//! Fail closed: a lookup that fails, or a caller whose socket no longer
//! belongs to any process (inode 0: it closed after sending, and its
//! socket may be a time-wait stub whose "uid 0" means nothing), is
//! refused. A caller that is not on this machine (no socket with that
//! 4-tuple here) can only reach a listener opened with
//! `allow_network_listen` (see [`super::listen`]); it is let in there,
//! as the user was warned.
//!
//! macOS and Windows: no peer check is built yet (see the README's "Local
//! door" section for what guards the listeners there and the plan);
//! [`UID_CHECKED`] is `false` and every loopback caller is admitted.

use std::net::SocketAddr;

use super::Door;

/// Whether this build checks each caller's uid.
pub const UID_CHECKED: bool = cfg!(target_os = "linux");

/// Who owns the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A socket of this machine, created by this uid.
    Uid(u32),
    /// No socket of this machine has that address pair: the caller is on
    /// another host.
    NotLocal,
}

/// Why the owner of a connection could not be told.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The netlink request could not be made or its answer made no sense.
    #[error("cannot ask the kernel who owns the connection: {0}")]
    Lookup(#[source] std::io::Error),
    /// The caller's socket belongs to no process any more.
    #[error("the caller closed its socket before it could be checked")]
    Closed,
    /// This platform has no peer check (yet).
    #[error("this platform cannot tell which user owns a connection")]
    Unsupported,
}

/// The owner of the socket at `peer` connected to our socket at `local`.
#[cfg(target_os = "linux")]
pub fn owner(local: SocketAddr, peer: SocketAddr) -> Result<Owner, PeerError> {
    linux::owner(local, peer)
}

#[cfg(not(target_os = "linux"))]
pub fn owner(_local: SocketAddr, _peer: SocketAddr) -> Result<Owner, PeerError> {
    Err(PeerError::Unsupported)
}

/// This process's uid.
pub fn own_uid() -> u32 {
    crate::control::current_uid()
}

/// "uid 65534 (nobody)", or "uid 1234" when the name is not in
/// `/etc/passwd` (directory-service users).
pub fn uid_label(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// "alice (uid 1000)", or "uid 1234".
pub fn user_label(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The user name of `uid` from `/etc/passwd`, if it is there.
pub fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    name_in_passwd(&text, uid)
}

fn name_in_passwd(text: &str, uid: u32) -> Option<String> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let id: u32 = f.next()?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

impl Door {
    /// Whether the caller at `peer`, connected to our socket at `local` on
    /// `service`'s listener, may go on. A refusal is recorded (and logged,
    /// naming the uid); the caller should then just be closed.
    pub fn admit(&self, service: &str, local: SocketAddr, peer: SocketAddr) -> bool {
        if !UID_CHECKED {
            return true;
        }
        let me = own_uid();
        match owner(local, peer) {
            Ok(Owner::Uid(uid)) if uid == me => true,
            Ok(Owner::Uid(uid)) => {
                self.refuse(
                    service,
                    &uid_label(uid),
                    &format!(
                        "another user's connection: only {} may use this agent's listeners",
                        user_label(me)
                    ),
                );
                false
            }
            Ok(Owner::NotLocal) if !peer.ip().to_canonical().is_loopback() => {
                // Only a listener the user opened to the network with
                // `allow_network_listen` can be reached from another host.
                tracing::debug!(service, %peer, "network caller on a listener open to the network");
                true
            }
            Ok(Owner::NotLocal) => {
                self.refuse(
                    service,
                    &format!("a caller at {peer}"),
                    "its socket could not be found, so its user cannot be checked",
                );
                false
            }
            Err(e) => {
                self.refuse(service, &format!("a caller at {peer}"), &e.to_string());
                false
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::net::SocketAddr;

    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
    use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
    use netlink_packet_sock_diag::SockDiagMessage;
    use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};

    use super::{Owner, PeerError};

    /// `ENOENT`: no socket with that 4-tuple.
    const ENOENT: i32 = 2;
    /// Bigger than one answer (a header and the fixed `inet_diag_msg`;
    /// no extensions are asked for).
    const ANSWER_BUF: usize = 8 * 1024;

    fn lookup(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PeerError {
        PeerError::Lookup(io::Error::other(e))
    }

    pub(super) fn owner(local: SocketAddr, peer: SocketAddr) -> Result<Owner, PeerError> {
        // An IPv4 caller on a dual-stack listener shows up as
        // `::ffff:a.b.c.d`; its socket is an IPv4 one.
        let (src, dst) = (peer.ip().to_canonical(), local.ip().to_canonical());
        let family = match (src, dst) {
            (std::net::IpAddr::V4(_), std::net::IpAddr::V4(_)) => AF_INET,
            (std::net::IpAddr::V6(_), std::net::IpAddr::V6(_)) => AF_INET6,
            _ => {
                return Err(lookup(
                    "the two ends of the connection differ in address family",
                ))
            }
        };
        // The caller's socket: its source is the peer address, its
        // destination our local one.
        let socket_id = SocketId {
            source_port: peer.port(),
            destination_port: local.port(),
            source_address: src,
            destination_address: dst,
            interface_id: 0,
            // INET_DIAG_NOCOOKIE: match by addresses only.
            cookie: [0xff; 8],
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: socket_id.clone(),
            })
            .into(),
        );
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);

        SOCKET.with(|cell| {
            let mut cached = cell.borrow_mut();
            let socket = match cached.take() {
                Some(s) => s,
                None => open_socket()?,
            };
            let got = ask(&socket, &out, &socket_id);
            // A socket that failed once is not trusted with the next
            // question (a late answer could be read as its answer).
            if got.is_ok() {
                *cached = Some(socket);
            }
            got
        })
    }

    thread_local! {
        /// One netlink socket per thread, kept between lookups: opening
        /// one costs five system calls more than the question itself.
        static SOCKET: std::cell::RefCell<Option<Socket>> = const { std::cell::RefCell::new(None) };
    }

    fn open_socket() -> Result<Socket, PeerError> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(PeerError::Lookup)?;
        socket.bind_auto().map_err(PeerError::Lookup)?;
        socket
            .connect(&NlAddr::new(0, 0))
            .map_err(PeerError::Lookup)?;
        // The kernel answers a single-socket request while `send` runs, so
        // the answer is already queued when `send` returns: a non-blocking
        // read never waits, and a missing answer is a refusal, not a hang
        // of the accept loop.
        socket.set_non_blocking(true).map_err(PeerError::Lookup)?;
        Ok(socket)
    }

    fn ask(socket: &Socket, request: &[u8], id: &SocketId) -> Result<Owner, PeerError> {
        socket.send(request, 0).map_err(PeerError::Lookup)?;
        let mut answer = Vec::with_capacity(ANSWER_BUF);
        let n = socket.recv(&mut answer, 0).map_err(PeerError::Lookup)?;
        answer.truncate(n);
        read_answer(&answer, id)
    }

    /// The owner named in the kernel's answer to a request for `id`.
    pub(super) fn read_answer(answer: &[u8], id: &SocketId) -> Result<Owner, PeerError> {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(answer)
            .map_err(|e| lookup(format!("bad answer: {e}")))?;
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                let h = &r.header;
                let same = h.socket_id.source_port == id.source_port
                    && h.socket_id.destination_port == id.destination_port
                    && h.socket_id.source_address == id.source_address
                    && h.socket_id.destination_address == id.destination_address;
                if !same {
                    return Err(lookup("the kernel answered about another socket"));
                }
                if h.inode == 0 {
                    // Orphaned or time-wait: no process holds it, and a
                    // time-wait stub reports uid 0 whoever made it.
                    return Err(PeerError::Closed);
                }
                Ok(Owner::Uid(h.uid))
            }
            NetlinkPayload::Error(e) => match e.code.map(|c| -c.get()) {
                Some(ENOENT) => Ok(Owner::NotLocal),
                Some(errno) => Err(PeerError::Lookup(io::Error::from_raw_os_error(errno))),
                None => Err(lookup("the kernel acknowledged without answering")),
            },
            other => Err(lookup(format!(
                "unexpected netlink message type {}",
                other.message_type()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_passwd_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      broken line\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(name_in_passwd(passwd, 0).as_deref(), Some("root"));
        assert_eq!(name_in_passwd(passwd, 65534).as_deref(), Some("nobody"));
        assert_eq!(name_in_passwd(passwd, 1000), None);
    }

    #[cfg(target_os = "linux")]
    mod linux {
        use super::super::*;
        use std::net::{TcpListener, TcpStream};
        use std::time::Instant;

        fn pair(ip: &str) -> (TcpStream, TcpStream) {
            let l = TcpListener::bind((ip, 0)).unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            (c, s)
        }

        #[test]
        fn a_connection_we_made_is_ours_on_ipv4_and_ipv6() {
            for ip in ["127.0.0.1", "::1"] {
                let (_c, s) = pair(ip);
                let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
                assert_eq!(owner(local, peer).unwrap(), Owner::Uid(own_uid()), "{ip}");
                let door = Door::new();
                assert!(door.admit("bitbucket", local, peer));
                assert_eq!(door.snapshot().refused, 0);
            }
        }

        #[test]
        fn an_unknown_address_pair_is_not_local_and_refused_on_loopback() {
            let (_c, s) = pair("127.0.0.1");
            let local = s.local_addr().unwrap();
            // A port pair no socket has.
            let ghost: SocketAddr = "127.0.0.1:1".parse().unwrap();
            assert_eq!(owner(local, ghost).unwrap(), Owner::NotLocal);
            let door = Door::new();
            assert!(!door.admit("bitbucket", local, ghost));
            let last = door.snapshot().last_refused.unwrap();
            assert_eq!(last.caller, "a caller at 127.0.0.1:1");
            assert!(last.reason.contains("cannot be checked"), "{}", last.reason);
        }

        #[test]
        fn a_caller_that_closed_its_socket_is_refused() {
            let (c, s) = pair("127.0.0.1");
            let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
            drop(c);
            // Its socket is orphaned (FIN_WAIT) or a time-wait stub: no
            // process owns it, whatever uid the kernel would report.
            let got = owner(local, peer);
            assert!(matches!(got, Err(PeerError::Closed)), "{got:?}");
        }

        /// A connection made by a child process running as another uid
        /// (needs root to switch: skipped, with a note, otherwise).
        #[test]
        fn a_connection_from_another_uid_is_that_uid() {
            if own_uid() != 0 {
                eprintln!("not root: cannot run a child as another uid; skipped");
                return;
            }
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            // bash holds the connection open until its stdin closes.
            let script = format!("exec 3<>/dev/tcp/127.0.0.1/{}; read _", addr.port());
            let mut child = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .args(["bash", "-c", &script])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // Accept without hanging if the child never connects.
            l.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + std::time::Duration::from_secs(30);
            let (s, peer) = loop {
                match l.accept() {
                    Ok(x) => break x,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let exited = child.try_wait().unwrap();
                        assert!(
                            exited.is_none() && Instant::now() < deadline,
                            "the child did not connect ({exited:?})"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            let got = owner(s.local_addr().unwrap(), peer).unwrap();
            let door = Door::new();
            let admitted = door.admit("bitbucket", s.local_addr().unwrap(), peer);
            drop(child.stdin.take());
            let _ = child.wait();
            assert_eq!(got, Owner::Uid(65534));
            assert!(!admitted);
            let last = door.snapshot().last_refused.unwrap();
            assert!(last.caller.starts_with("uid 65534"), "{}", last.caller);
            assert!(last.reason.contains("another user's connection"));
        }

        /// What one check costs, printed (run with `--nocapture`); not
        /// asserted: speed belongs in benchmarks.
        #[test]
        fn lookup_cost() {
            let (_c, s) = pair("127.0.0.1");
            let (local, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
            let n = 2000;
            let t = Instant::now();
            for _ in 0..n {
                assert_eq!(owner(local, peer).unwrap(), Owner::Uid(own_uid()));
            }
            let each = t.elapsed() / n;
            eprintln!("sock_diag peer lookup: {each:?} each over {n} lookups");
        }
    }
}
