//! The transport seam: how a backend opens a byte stream to a broker.
//!
//! Backends never open sockets themselves; they ask a [`Connector`]. In production that is
//! [`TokioTcp`]; in the deterministic simulation it is `TurmoilTcp` (feature `sim`), which runs
//! the very same backend code over turmoil's simulated network, where partitions and server
//! restarts can be injected.

use std::fmt;
use std::io;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A connected, bidirectional byte stream.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

/// A boxed [`ByteStream`], what a [`Connector`] hands out.
pub type BoxedStream = Box<dyn ByteStream>;

/// Opens byte streams to `host:port` addresses.
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// Connects to `addr` (`host:port`).
    async fn connect(&self, addr: &str) -> io::Result<BoxedStream>;
}

/// Plain TCP through tokio, with Nagle's algorithm off (bus messages are small and latency
/// matters more than packet count).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioTcp;

#[async_trait]
impl Connector for TokioTcp {
    async fn connect(&self, addr: &str) -> io::Result<BoxedStream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}

/// TCP over turmoil's simulated network; use inside a `turmoil::Sim` host or client.
#[cfg(feature = "sim")]
#[derive(Debug, Default, Clone, Copy)]
pub struct TurmoilTcp;

#[cfg(feature = "sim")]
#[async_trait]
impl Connector for TurmoilTcp {
    async fn connect(&self, addr: &str) -> io::Result<BoxedStream> {
        let stream = turmoil::net::TcpStream::connect(addr).await?;
        Ok(Box::new(stream))
    }
}

/// TLS (rustls) over any other connector: what `rediss://` uses.
///
/// Trusts the Mozilla root certificates plus, optionally, the CA certificates of one PEM file
/// (for private CAs and self-signed test servers). The server name checked is the host part of
/// the address.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub struct TlsConnector {
    inner: std::sync::Arc<dyn Connector>,
    config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
}

#[cfg(feature = "tls")]
impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "tls")]
impl TlsConnector {
    /// Wraps `inner`; `ca_file` adds the PEM certificates in it to the trusted roots.
    pub fn new(
        inner: std::sync::Arc<dyn Connector>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, crate::BusError> {
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::{ClientConfig, RootCertStore};

        let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let bad = |reason: String| {
                crate::BusError::config("tls_ca_file", format!("{}: {reason}", path.display()))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
        }
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| crate::BusError::config("tls", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConnector {
            inner,
            config: std::sync::Arc::new(config),
        })
    }
}

#[cfg(feature = "tls")]
#[async_trait]
impl Connector for TlsConnector {
    async fn connect(&self, addr: &str) -> io::Result<BoxedStream> {
        use tokio_rustls::rustls::pki_types::ServerName;

        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let stream = self.inner.connect(addr).await?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await?;
        Ok(Box::new(tls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn tokio_tcp_carries_bytes_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            socket.read_exact(&mut buf).await.unwrap();
            socket.write_all(b"pong").await.unwrap();
            buf
        });
        let mut stream = TokioTcp.connect(&addr).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"pong");
        assert_eq!(&server.await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn tokio_tcp_reports_refused_connections() {
        // Bind then drop a listener so the port is (almost certainly) closed.
        let addr = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().to_string()
        };
        assert!(TokioTcp.connect(&addr).await.is_err());
    }
}
