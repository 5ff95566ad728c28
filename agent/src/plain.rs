//! Network and TLS failures in plain words: one sentence and what to do,
//! instead of `invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))`.
//!
//! [`explain`] looks at one error of a chain (a `rustls::Error`, or an
//! `io::Error` carrying one, or an `io::Error` of a kind people meet);
//! [`crate::error::error_chain`] uses it so that every message the CLI,
//! the tray and the status window show says it the same way.

use std::error::Error;
use std::io;

use rustls::CertificateError;

/// What went wrong, for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plain {
    pub sentence: &'static str,
    pub fix: &'static str,
}

impl std::fmt::Display for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} — {}", self.sentence, self.fix)
    }
}

const fn plain(sentence: &'static str, fix: &'static str) -> Option<Plain> {
    Some(Plain { sentence, fix })
}

/// The plain words for `e` itself (not its sources), if it is a failure
/// people meet.
pub fn explain(e: &(dyn Error + 'static)) -> Option<Plain> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return tls(t);
    }
    let io = e.downcast_ref::<io::Error>()?;
    if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return tls(t);
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

    fn cert(c: CertificateError) -> Option<&'static str> {
        explain(&rustls::Error::InvalidCertificate(c)).map(|p| p.sentence)
    }

    #[test]
    fn certificate_errors_are_said_plainly() {
        assert_eq!(
            cert(CertificateError::Expired),
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
            cert(ca),
            Some("the relay presents a CA certificate as its own certificate")
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
