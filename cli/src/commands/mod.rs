//! One file per `gangway` command.

pub mod bugreport;
pub mod config;
pub mod doctor;
pub mod env;
pub mod git;
pub mod login;
pub mod logout;
pub mod open;
pub mod ssh_proxy;
pub mod status;
pub mod token;
pub mod up;
