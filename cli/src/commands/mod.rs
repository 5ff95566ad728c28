//! One file per `gangway` command.

pub mod config;
pub mod env;
pub mod login;
pub mod logout;
pub mod status;
pub mod token;
pub mod up;
