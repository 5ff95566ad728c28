//! Network and TLS failures in plain words: one sentence and what to do,
//! instead of `invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))`.
//!
//! [`explain`] looks at one error of a chain (a `rustls::Error`, or an
//! `io::Error` carrying one, or an `io::Error` of a kind people meet);
//! [`crate::error::error_chain`] uses it so that every message the CLI,
//! the tray and the status window show says it the same way.

use std::borrow::Cow;
use std::error::Error;
use std::io;

use rustls::CertificateError;

/// What went wrong, for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    pub sentence: Cow<'static, str>,
    pub fix: Cow<'static, str>,
}

impl std::fmt::Display for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} — {}", self.sentence, self.fix)
    }
}

const fn plain(sentence: &'static str, fix: &'static str) -> Option<Plain> {
    Some(Plain {
        sentence: Cow::Borrowed(sentence),
        fix: Cow::Borrowed(fix),
    })
}

/// The plain words for `e` itself (not its sources), if it is a failure
/// people meet.
pub fn explain(e: &(dyn Error + 'static)) -> Option<Plain> {
    // A proxy's failure names the proxy (crate::net::proxy).
    if let Some(p) = e.downcast_ref::<crate::net::ProxyError>() {
        return Some(Plain {
            sentence: p.to_string().into(),
            fix: p.fix().into(),
        });
    }
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return tls(t);
    }
    if let Some(p) = tunnel(e) {
        return Some(p);
    }
    let mut io = e.downcast_ref::<io::Error>()?;
    // An io::Error may carry the TLS error, or another io::Error that does
    // (hyper-rustls wraps tokio-rustls' error once more); its `source()`
    // skips what it carries, so look inside by hand.
    for _ in 0..4 {
        let Some(inner) = io.get_ref() else { break };
        if let Some(t) = inner.downcast_ref::<rustls::Error>() {
            return tls(t);
        }
        match inner.downcast_ref::<io::Error>() {
            Some(i) => io = i,
            None => break,
        }
    }
    match io.kind() {
        io::ErrorKind::ConnectionRefused => plain(
            "nothing answers at that address (connection refused)",
            "check the relay URL and that the relay runs; ask IT if it is down",
        ),
        io::ErrorKind::TimedOut => plain(
            "the connection timed out",
            "check your network, proxy and firewall; the relay may be down",
        ),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => plain(
            "the connection was cut by the other side or by something in between",
            "try again; if it keeps happening, a proxy or firewall may be blocking Gangway",
        ),
        _ => None,
    }
}

/// A CONNECT through the proxy that reqwest failed to open (hyper-util's
/// `TunnelError`, not exported: known by its words), where nothing named
/// the proxy yet ([`crate::net::Egress::explain`] does for the relay).
fn tunnel(e: &(dyn Error + 'static)) -> Option<Plain> {
    let words = e.to_string();
    let what = words.strip_prefix("tunnel error: ")?;
    match what {
        "proxy authorization required" => plain(
            "the proxy asks for a user name and password, or rejected the ones given",
            "check the user name and password in the proxy URL: http://USER:PASSWORD@HOST:PORT (the proxy key or HTTPS_PROXY)",
        ),
        "unsuccessful" => plain(
            "the proxy refused to open a connection to the server",
            "ask IT to let it through the proxy (HTTP CONNECT to its host and port), or check the proxy setting",
        ),
        "failed to create underlying connection" => plain(
            "cannot reach the proxy",
            "check the proxy setting (the proxy key or HTTPS_PROXY) and your network; ask IT if the proxy is down",
        ),
        _ => plain(
            "the proxy did not answer as an HTTP proxy",
            "check the proxy setting (the proxy key or HTTPS_PROXY)",
        ),
    }
}

fn tls(e: &rustls::Error) -> Option<Plain> {
    let rustls::Error::InvalidCertificate(c) = e else {
        return match e {
            rustls::Error::AlertReceived(_) => plain(
                "the relay ended the TLS handshake",
                "the relay or a proxy in between refuses this client; ask IT",
            ),
            _ => None,
        };
    };
    match c {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => plain(
            "the relay's certificate has expired",
            "check this computer's date and time; if they are right, the relay's administrator must renew the certificate",
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => plain(
            "the relay's certificate is not valid yet",
            "check this computer's date and time",
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => plain(
            "the relay's certificate is for another name than the one in the relay URL",
            "check the relay URL; otherwise the relay's administrator must add this name to the certificate",
        ),
        CertificateError::UnknownIssuer => plain(
            "the relay's certificate is not signed by an authority this computer trusts (it may be self-signed, or a proxy inspects TLS)",
            "if your company has its own CA, trust it: --ca-file CA.pem (or `gangway env add … --ca-file`), or have IT add it to the system's trust store",
        ),
        CertificateError::BadSignature => plain(
            "the relay's certificate has an invalid signature",
            "the relay's administrator must replace the certificate",
        ),
        CertificateError::Revoked => plain(
            "the relay's certificate has been revoked",
            "the relay's administrator must replace the certificate",
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => plain(
            "the relay's certificate is not meant for a TLS server",
            "the relay's administrator must issue one with extendedKeyUsage serverAuth",
        ),
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => plain(
                "the relay presents a CA certificate as its own certificate",
                "the relay's administrator must issue a server certificate (basicConstraints CA:FALSE, extendedKeyUsage serverAuth) signed by that CA, and give you the CA",
            ),
            Some(webpki::Error::UnknownIssuer) => tls(&rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cert(c: CertificateError) -> Option<String> {
        explain(&rustls::Error::InvalidCertificate(c)).map(|p| p.sentence.into_owned())
    }

    #[test]
    fn certificate_errors_are_said_plainly() {
        assert_eq!(
            cert(CertificateError::Expired).as_deref(),
            Some("the relay's certificate has expired")
        );
        assert!(cert(CertificateError::NotValidForName)
            .unwrap()
            .contains("another name"));
        assert!(cert(CertificateError::UnknownIssuer)
            .unwrap()
            .contains("not signed by an authority"));
        let ca = CertificateError::Other(rustls::OtherError(Arc::new(
            webpki::Error::CaUsedAsEndEntity,
        )));
        assert_eq!(
            cert(ca).as_deref(),
            Some("the relay presents a CA certificate as its own certificate")
        );
    }

    /// The chain reqwest really produces for a server presenting a CA
    /// certificate as its own (what users saw before).
    #[tokio::test]
    async fn reqwests_chain_for_a_ca_certificate_is_said_plainly() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let tls = crate::tls::client_config(Some(&ca)).unwrap();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .build()
            .unwrap();
        let e = client
            .get(format!("https://{addr}/"))
            .send()
            .await
            .unwrap_err();
        let said = crate::error::error_chain(&e);
        assert!(
            said.contains("the relay presents a CA certificate as its own certificate"),
            "{said}"
        );
    }

    #[test]
    fn io_errors_carrying_tls_and_plain_io_kinds() {
        let wrapped = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        assert_eq!(
            explain(&wrapped).unwrap().sentence,
            "the relay's certificate has expired"
        );
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(explain(&refused)
            .unwrap()
            .sentence
            .contains("connection refused"));
        assert_eq!(explain(&io::Error::other("something else")), None);
    }
}
