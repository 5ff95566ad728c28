//! The bodies the proxy answers with: the backend's, counted while it
//! streams ([`Tracked`]), an empty one, and the relay's own error page.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};

use crate::backends::InFlight;

/// Every body the proxy sends either way.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

pub fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A short error page that names the service and the reason.
/// Built without a fallible builder: no text can make it fail.
pub fn page(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let body = format!("Gangway: {text}\n");
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-gangway-error",
        HeaderValue::from_str(&crate::text::header_safe(text))
            .unwrap_or(HeaderValue::from_static("error")),
    );
    resp
}

/// A response body that keeps its backend's in-flight count until done.
pub struct Tracked {
    inner: ProxyBody,
    _guard: InFlight,
}

impl Tracked {
    pub fn new(inner: ProxyBody, guard: InFlight) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
