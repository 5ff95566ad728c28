//! Authorization code + PKCE (S256) with a loopback redirect (RFC 8252):
//! a one-shot HTTP listener on `127.0.0.1` and a random port receives the
//! browser's redirect, checks `state`, and shows a small result page.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use oauth2::{AuthorizationCode, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::provider::{describe, request_error, IdentityProvider};
use super::tokens::{TokenSet, UnverifiedClaims};
use super::{now_unix, SignInError};

/// Path of the redirect URI (`http://127.0.0.1:<port>/callback`).
pub const CALLBACK_PATH: &str = "/callback";

/// One request to the callback path, waiting for the page to show.
struct Callback {
    params: HashMap<String, String>,
    reply: oneshot::Sender<Page>,
}

/// The page the browser gets after the redirect.
struct Page {
    ok: bool,
    text: String,
}

/// Runs the browser sign-in: builds the authorization URL, hands it to
/// `show` (print it, open the browser), waits up to `timeout` for the
/// redirect, then exchanges the code.
pub async fn authorization_code(
    idp: &IdentityProvider,
    timeout: Duration,
    show: impl FnOnce(&Url),
) -> Result<TokenSet, SignInError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| SignInError::Local(format!("cannot listen on 127.0.0.1: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| SignInError::Local(e.to_string()))?
        .port();
    let redirect = RedirectUrl::new(format!("http://127.0.0.1:{port}{CALLBACK_PATH}"))
        .map_err(|e| SignInError::Local(e.to_string()))?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let client = idp.client().set_redirect_uri(redirect);
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        // A refresh token needs offline_access, and OIDC providers grant
        // it only with explicit consent.
        .add_extra_param("prompt", "consent");
    if let Some(jkt) = idp.dpop_jkt() {
        request = request.add_extra_param("dpop_jkt", jkt.to_string());
    }
    for s in &idp.scopes {
        request = request.add_scope(Scope::new(s.clone()));
    }
    let (url, state) = request.url();

    let (tx, mut rx) = mpsc::channel::<Callback>(4);
    let stop = CancellationToken::new();
    let served = Arc::new(Notify::new());
    let server = tokio::spawn(serve(listener, tx, served.clone(), stop.clone()));
    show(&url);

    let callback = tokio::time::timeout(timeout, rx.recv()).await;
    let result = match callback {
        Err(_) => Err(SignInError::TimedOut(timeout.as_secs())),
        Ok(None) => Err(SignInError::Local("the loopback listener stopped".into())),
        Ok(Some(cb)) => {
            let result = async {
                let params = &cb.params;
                // `state` first: an answer to some other request is not ours
                // to interpret, not even its error.
                if params.get("state").map(String::as_str) != Some(state.secret().as_str()) {
                    return Err(SignInError::StateMismatch);
                }
                if let Some(error) = params.get("error") {
                    let what = describe(error, params.get("error_description"));
                    return Err(if error == "access_denied" {
                        SignInError::Denied(what)
                    } else {
                        idp.refused(what)
                    });
                }
                let code = params.get("code").ok_or_else(|| {
                    idp.refused("the redirect carried neither a code nor an error".into())
                })?;
                match client
                    .exchange_code(AuthorizationCode::new(code.clone()))
                    .set_pkce_verifier(verifier)
                    .request_async(&idp.token_http())
                    .await
                {
                    Ok(r) => Ok(TokenSet::from_response(&r, now_unix())),
                    Err(oauth2::RequestTokenError::ServerResponse(r)) => Err(idp.refused(format!(
                        "code exchange refused: {}",
                        describe(r.error().as_ref(), r.error_description())
                    ))),
                    Err(e) => Err(idp.unreachable(request_error(&e))),
                }
            }
            .await;
            let page = match &result {
                Ok(set) => {
                    let who = UnverifiedClaims::peek(set.access.expose())
                        .and_then(|c| c.preferred_username.or(c.sub))
                        .map(|s| format!(" as {s}"))
                        .unwrap_or_default();
                    Page {
                        ok: true,
                        text: format!(
                            "You are signed in to Gangway{who}. You can close this tab and go back to the terminal."
                        ),
                    }
                }
                Err(e) => Page {
                    ok: false,
                    text: e.to_string(),
                },
            };
            let _ = cb.reply.send(page);
            // Let the page reach the browser before the listener goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), served.notified()).await;
            result
        }
    };
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    result
}

/// Accepts connections until `stop`; each `GET /callback` is handed over
/// once, and its connection closed after the page.
async fn serve(
    listener: TcpListener,
    tx: mpsc::Sender<Callback>,
    served: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let tx = tx.clone();
        let served = served.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let delivered = Arc::new(AtomicBool::new(false));
            let d = delivered.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                let d = d.clone();
                async move { Ok::<_, Infallible>(answer(req, &tx, &d).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
            if delivered.load(Ordering::SeqCst) {
                served.notify_one();
            }
        });
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    tx: &mpsc::Sender<Callback>,
    delivered: &AtomicBool,
) -> Response<Full<Bytes>> {
    if req.uri().path() != CALLBACK_PATH {
        return html(StatusCode::NOT_FOUND, "Not found", "Nothing here.", false);
    }
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let (reply, page) = oneshot::channel();
    if tx.try_send(Callback { params, reply }).is_err() {
        return gone();
    }
    match tokio::time::timeout(Duration::from_secs(60), page).await {
        Ok(Ok(page)) => {
            delivered.store(true, Ordering::SeqCst);
            if page.ok {
                html(StatusCode::OK, "Signed in", &page.text, true)
            } else {
                html(StatusCode::BAD_REQUEST, "Sign-in failed", &page.text, false)
            }
        }
        _ => gone(),
    }
}

fn gone() -> Response<Full<Bytes>> {
    html(
        StatusCode::GONE,
        "Sign-in finished",
        "This sign-in is no longer waiting for an answer. Run `gangway login` again if needed.",
        false,
    )
}

fn html(status: StatusCode, title: &str, text: &str, ok: bool) -> Response<Full<Bytes>> {
    let outcome = if ok { "success" } else { "failure" };
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Gangway: {t}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{t}</h1><p id=\"gangway-result\" data-outcome=\"{outcome}\">{x}</p></body></html>",
        t = escape(title),
        x = escape(text),
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .header("connection", "close")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_show() {
        assert_eq!(escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
