//! Connections we open ourselves ([`Sender::connect`]): one attempt at a time per remote,
//! bounded by the connect timeout, and the TLS client configuration they verify servers with.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::debug;

use super::{Sender, Source, TransportKind};

impl Sender {
    /// Where to send requests to `remote` over `transport`: for UDP our socket; for TCP and TLS
    /// a live connection to it (opened by either side), else a new one, served like an
    /// accepted connection so that what arrives on it reaches the handler. TLS verifies the
    /// certificate against `server_name`, or the IP address when None. Send on the returned
    /// [`Source`] with [`send_to`](Self::send_to).
    pub async fn connect(
        &self,
        transport: TransportKind,
        remote: SocketAddr,
        server_name: Option<&str>,
    ) -> std::io::Result<Source> {
        if transport == TransportKind::Udp {
            let local = match &self.inner.udp {
                Some(sock) => {
                    // send_to never waits, so make sure the socket can take a datagram: a
                    // fresh one is not known to be writable until the reactor has seen it.
                    sock.writable().await?;
                    sock.local_addr()?
                }
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "no UDP socket (sip.udp is not set)",
                    ))
                }
            };
            return Ok(Source {
                transport,
                remote,
                local,
                connection: None,
            });
        }
        if let Some(source) = self.live_connection(transport, remote) {
            return Ok(source);
        }
        let key = (transport, remote);
        let gate = self
            .inner
            .connecting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let result = {
            let _turn = gate.lock().await;
            match self.live_connection(transport, remote) {
                Some(source) => Ok(source),
                None => self.open(transport, remote, server_name).await,
            }
        };
        let mut connecting = self
            .inner
            .connecting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Forget the gate unless someone else is still waiting on it.
        if connecting
            .get(&key)
            .is_some_and(|g| Arc::ptr_eq(g, &gate) && Arc::strong_count(&gate) == 2)
        {
            connecting.remove(&key);
        }
        result
    }

    pub(super) fn live_connection(
        &self,
        transport: TransportKind,
        remote: SocketAddr,
    ) -> Option<Source> {
        let connections = self.connections();
        let id = *connections.by_remote.get(&(transport, remote))?;
        let connection = connections.by_id.get(&id)?;
        if connection.tx.is_closed() {
            return None;
        }
        Some(Source {
            transport,
            remote,
            local: connection.local,
            connection: Some(id),
        })
    }

    async fn open(
        &self,
        transport: TransportKind,
        remote: SocketAddr,
        server_name: Option<&str>,
    ) -> std::io::Result<Source> {
        let tls = match transport {
            TransportKind::Tls => {
                let name = match server_name {
                    Some(name) => rustls::pki_types::ServerName::try_from(name.to_string())
                        .map_err(|e| {
                            std::io::Error::new(
                                std::io::ErrorKind::InvalidInput,
                                format!("bad TLS server name {name:?}: {e}"),
                            )
                        })?,
                    None => rustls::pki_types::ServerName::from(remote.ip()),
                };
                Some((self.tls_client()?, name))
            }
            _ => None,
        };
        let opening = async {
            let stream = TcpStream::connect(remote).await?;
            let _ = stream.set_nodelay(true);
            let source = Source {
                transport,
                remote,
                local: stream.local_addr()?,
                connection: Some(self.inner.next_id.fetch_add(1, Ordering::Relaxed)),
            };
            match tls {
                Some((config, name)) => {
                    let stream = tokio_rustls::TlsConnector::from(config)
                        .connect(name, stream)
                        .await?;
                    self.attach_stream(stream, source, None);
                }
                None => self.attach_stream(stream, source, None),
            }
            Ok(source)
        };
        let timeout = self.inner.outbound.connect_timeout;
        let result = match tokio::time::timeout(timeout, opening).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting took longer than {timeout:?}"),
            )),
        };
        match &result {
            Ok(source) => {
                debug!(%remote, transport = ?transport, id = ?source.connection, "SIP connection opened")
            }
            Err(e) => debug!(%remote, transport = ?transport, error = %e, "SIP connection failed"),
        }
        result
    }

    fn tls_client(&self) -> std::io::Result<Arc<rustls::ClientConfig>> {
        if let Some(config) = &self.inner.outbound.tls {
            return Ok(config.clone());
        }
        if let Some(config) = self.inner.default_tls_client.get() {
            return Ok(config.clone());
        }
        let config = client_tls_config(None, false).map_err(std::io::Error::other)?;
        Ok(self.inner.default_tls_client.get_or_init(|| config).clone())
    }
}

/// A rustls client configuration for SIP over TLS: the ring provider, the webpki roots and the
/// PEM certificates in `extra_ca_pem` (for carriers with private CAs). `insecure_skip_verify`
/// accepts any certificate, for tests only. Build it once and share it.
pub fn client_tls_config(
    extra_ca_pem: Option<&[u8]>,
    insecure_skip_verify: bool,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if insecure_skip_verify {
        return Ok(Arc::new(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0usize;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("bad PEM in the CA certificates: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("bad CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("no PEM certificate among the CA certificates".into());
        }
    }
    Ok(Arc::new(
        builder.with_root_certificates(roots).with_no_client_auth(),
    ))
}

/// Accepts any server certificate but still checks the handshake signatures, so the session
/// is at least bound to the key the server showed. Tests only.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
