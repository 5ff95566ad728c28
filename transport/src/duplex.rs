//! The one copy loop: bytes both ways between two streams, with half-close.
//!
//! When one side finishes sending (EOF), the other side's write half is shut
//! down, and copying continues the other way until it ends too, so a client
//! that half-closes after its request still gets the whole response.

use tokio::io::{AsyncRead, AsyncWrite};

/// Buffer size per direction: large enough for bulk transfers.
pub const BUF_SIZE: usize = 64 * 1024;

/// Bytes moved by [`splice`], per direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

/// Copies `a` ⇄ `b` until both directions have ended.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> std::io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (a_to_b, b_to_a) =
        tokio::io::copy_bidirectional_with_sizes(a, b, BUF_SIZE, BUF_SIZE).await?;
    Ok(Transferred { a_to_b, b_to_a })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_lets_the_response_finish() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(1024);
        let proxy = tokio::spawn(async move { splice(&mut proxy_a, &mut proxy_b).await });

        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap(); // half-close: request done

        let big = vec![7u8; 200_000];
        let expected = big.clone();
        let server = tokio::spawn(async move {
            let mut req = Vec::new();
            server.read_to_end(&mut req).await.unwrap(); // sees EOF after the request
            assert_eq!(req, b"request");
            server.write_all(&big).await.unwrap();
            server.shutdown().await.unwrap();
        });

        let mut resp = Vec::new();
        client.read_to_end(&mut resp).await.unwrap();
        assert_eq!(resp, expected);
        server.await.unwrap();
        let t = proxy.await.unwrap().unwrap();
        assert_eq!(
            t,
            Transferred {
                a_to_b: 7,
                b_to_a: 200_000
            }
        );
    }
}
