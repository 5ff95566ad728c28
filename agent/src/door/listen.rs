//! Where listeners may be opened: loopback only, unless the user said
//! otherwise in so many words.
//!
//! Whatever reaches a listener acts as the signed-in user, and a caller on
//! another host cannot be checked for its uid (see [`super::peer`]), so a
//! listener on `0.0.0.0` or a LAN address hands the user's identity to
//! everyone who can reach it. [`check`] refuses such an address unless
//! `allow_network` is set (`gangway up --allow-network-listen`), and then
//! [`warning`] says who can now act as the user. `up::start` calls it for every address, so
//! no front end (tray, config, CLI) can skip it.

use std::net::SocketAddr;

/// The command-line flag that allows a non-loopback listener.
pub const ALLOW_FLAG: &str = "--allow-network-listen";

/// A listener address refused because it is not loopback.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to listen for {service} on {addr}: it is not a loopback address, so anyone who \
     can reach it could use {service} as you; use 127.0.0.1 or [::1], or add {ALLOW_FLAG} if \
     that is really what you want"
)]
pub struct NetworkListenRefused {
    pub service: String,
    pub addr: SocketAddr,
}

/// Whether `service` may listen on `addr`: loopback always, anything else
/// only with `allow_network` (then show [`warning`] once it is bound).
pub fn check(
    service: &str,
    addr: SocketAddr,
    allow_network: bool,
) -> Result<(), NetworkListenRefused> {
    if is_loopback(addr) || allow_network {
        return Ok(());
    }
    Err(NetworkListenRefused {
        service: service.to_string(),
        addr,
    })
}

/// Whether only this computer can reach `addr`.
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// "… anyone who can reach 0.0.0.0:17995 can use Bitbucket as alice …".
pub fn warning(display_name: &str, user: &str, addr: SocketAddr) -> String {
    format!(
        "{display_name} listens on {addr}, which is not a loopback address: anyone who can reach \
         {addr} can use {display_name} as {user} (their uid cannot be checked)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed_and_then_a_warning() {
        for ok in [
            "127.0.0.1:7990",
            "[::1]:7990",
            "127.8.9.10:0",
            "[::ffff:127.0.0.1]:1",
        ] {
            let a: SocketAddr = ok.parse().unwrap();
            assert_eq!(check("bitbucket", a, false), Ok(()));
        }
        for bad in ["0.0.0.0:17995", "[::]:17995", "192.0.2.7:1"] {
            let a: SocketAddr = bad.parse().unwrap();
            let e = check("bitbucket", a, false).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(ALLOW_FLAG) && text.contains(bad), "{text}");
            assert_eq!(check("bitbucket", a, true), Ok(()));
            let w = warning("Bitbucket", "alice", a);
            assert!(
                w.contains(&format!(
                    "anyone who can reach {bad} can use Bitbucket as alice"
                )),
                "{w}"
            );
        }
    }
}
