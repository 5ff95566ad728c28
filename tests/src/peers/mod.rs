//! One module per kind of real peer.

pub mod git;
pub mod nginx;
pub mod oidc;
pub mod process;
