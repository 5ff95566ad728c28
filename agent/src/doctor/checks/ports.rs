//! The local ports of the environment's services: free, held by the
//! running Gangway agent, or busy — and then which program holds them.

use crate::doctor::holder::{holder, Holder};
use crate::doctor::{Outcome, Probe, Status};

/// One service's local port as found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Port {
    Free,
    Agent,
    Busy(Option<Holder>),
    Other(String),
}

fn describe(h: &Holder) -> String {
    let who = crate::door::peer::uid_label(h.uid);
    match (h.pid, &h.exe) {
        (Some(pid), Some(exe)) => format!("pid {pid} {exe}, {who}"),
        (Some(pid), None) => format!("pid {pid}, {who}"),
        _ => format!("a process of {who} this user cannot see"),
    }
}

/// Each service's port (the catalog's, or the environment's override).
pub async fn ports(p: &Probe) -> Outcome {
    let Some(env) = p.environment() else {
        return Outcome::blocked("config");
    };
    let agent = p.agent_here().await;
    let relay_down = p.relay_answer().await.err();
    // The services: the relay's catalog, else what the running agent serves.
    let services: Vec<(String, u16)> = match (p.catalog().await, agent) {
        (Ok(c), _) => c
            .services
            .iter()
            .map(|s| (s.name.clone(), s.local_port))
            .collect(),
        (Err(_), Some(a)) => a
            .services
            .iter()
            .map(|s| {
                let port = s
                    .local_addr
                    .as_deref()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                    .map_or(0, |a| a.port());
                (s.name.clone(), port)
            })
            .collect(),
        (Err(_), None) if relay_down.is_some() => {
            return Outcome::blocked(relay_down.unwrap_or("relay"))
        }
        (Err(_), None) => return Outcome::blocked("token"),
    };
    let held_by_agent: Vec<u16> = agent
        .map(|a| {
            a.services
                .iter()
                .filter_map(|s| s.local_addr.as_deref())
                .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port())
                .collect()
        })
        .unwrap_or_default();
    let agent_pid = agent.map(|a| a.pid);
    let mut found = Vec::new();
    for (name, suggested) in services {
        let port = env.ports.get(&name).copied().unwrap_or(suggested);
        if port == 0 {
            continue; // Any free port: nothing to collide with.
        }
        let state = if held_by_agent.contains(&port) {
            Port::Agent
        } else {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(_) => Port::Free,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match holder(port) {
                    Some(h) if h.pid.is_some() && h.pid == agent_pid => Port::Agent,
                    h => Port::Busy(h),
                },
                Err(e) => Port::Other(e.to_string()),
            }
        };
        found.push((name, port, state));
    }
    if found.is_empty() {
        return Outcome::pass("every service listens on a port chosen when it starts");
    }
    let mut status = Status::Pass;
    let mut parts = Vec::new();
    let mut fix = None;
    for (name, port, state) in &found {
        parts.push(match state {
            Port::Free => format!("{port} ({name}) free"),
            Port::Agent => format!("{port} ({name}) held by the running Gangway agent"),
            Port::Busy(Some(h)) if h.pid.is_some() => {
                status = Status::Fail;
                fix.get_or_insert(format!(
                    "stop that program, or give {name} another port: [environment.ports] {name} = N in your config file"
                ));
                format!("{port} ({name}) busy: held by {}", describe(h))
            }
            Port::Busy(h) => {
                status = status.max(Status::Warn);
                fix.get_or_insert(format!(
                    "find what listens on {port} (`ss -ltnp`), or give {name} another port in your config file"
                ));
                match h {
                    Some(h) => format!("{port} ({name}) busy: held by {}", describe(h)),
                    None => format!("{port} ({name}) busy: the program holding it cannot be told"),
                }
            }
            Port::Other(e) => {
                status = status.max(Status::Warn);
                fix.get_or_insert("see the message".into());
                format!("{port} ({name}): {e}")
            }
        });
    }
    let detail = parts.join("; ");
    match (status, fix) {
        (Status::Pass, _) | (_, None) => Outcome::pass(detail),
        (Status::Warn, Some(f)) => Outcome::warn(detail, f),
        (Status::Fail, Some(f)) => Outcome::fail(detail, f),
    }
}
