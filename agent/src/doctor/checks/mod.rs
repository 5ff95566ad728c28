//! The checks, by what they look at. Each is `async fn(&Probe) -> Outcome`.

pub mod config;
pub mod identity;
pub mod ports;
pub mod relay;
pub mod tools;
pub mod tunnel;
