//! The tunnel itself: WebSocket upgrade, handshake and a control-channel
//! ping round trip.

use crate::doctor::{Outcome, Probe};
use crate::error::error_chain;
use crate::session::Session;

/// Opens a session to the relay with the token and times one ping.
pub async fn tunnel(p: &Probe) -> Outcome {
    let Some(env) = p.environment() else {
        return Outcome::blocked("config");
    };
    if let Err(piece) = p.relay_answer().await {
        return Outcome::blocked(piece);
    }
    let Ok(token) = p.token().await else {
        return Outcome::blocked("token");
    };
    let egress = match p.egress() {
        Ok(t) => t.clone(),
        Err(e) => return Outcome::fail(e, "fix the environment's ca_file or proxy"),
    };
    let session =
        match Session::connect_with(&env.relay, &egress, &token.token, p.proof_key().await).await {
            Ok(s) => s,
            Err(e) => {
                return Outcome::fail(
                    format!("the tunnel does not open: {}", error_chain(&e)),
                    "a proxy or firewall may block WebSockets (wss://) to the relay; ask IT",
                )
            }
        };
    match session.ping().await {
        Ok(rtt) => Outcome::pass(format!(
            "WebSocket session {} open; control-channel ping {:.1} ms",
            session.id,
            rtt.as_secs_f64() * 1000.0
        )),
        Err(e) => Outcome::fail(
            format!(
                "the session opened but the relay did not answer a ping: {}",
                error_chain(&e)
            ),
            "something between here and the relay stalls long-lived connections; ask IT",
        ),
    }
}
