//! One module per kind of real peer.

pub mod browser;
pub mod cgi;
pub mod desktop;
pub mod git;
pub mod haproxy;
pub mod keychain;
mod lighttpd;
pub mod local_user;
pub mod nginx;
pub mod oidc;
pub mod process;
pub mod redis;
pub mod rsyslog;
pub mod squid;
pub mod sshd;
