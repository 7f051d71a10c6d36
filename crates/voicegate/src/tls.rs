//! The TLS listener's certificate: loaded from PEM files, or a self-signed one generated at
//! start when none is configured. rustls runs with the ring provider only.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("config: {key}: cannot read {path}: {reason}")]
    Read {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("config: {key}: {path} holds no {what}")]
    Empty {
        key: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("config: sip.tls_cert/sip.tls_key: {0}")]
    Rejected(String),
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// Builds the server config from `files` (cert, key), or from a fresh self-signed certificate.
pub fn server_config(
    files: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let (certs, key) = match files {
        Some((cert, key)) => (read_certs(cert)?, read_key(key)?),
        None => self_signed()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rejected(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError::Rejected(e.to_string()))?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let key = "sip.tls_cert";
    let pem = std::fs::read(path).map_err(|e| TlsSetupError::Read {
        key,
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Read {
            key,
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Empty {
            key,
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let key = "sip.tls_key";
    let pem = std::fs::read(path).map_err(|e| TlsSetupError::Read {
        key,
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsSetupError::Read {
            key,
            path: path.display().to_string(),
            reason: e.to_string(),
        })?
        .ok_or(TlsSetupError::Empty {
            key,
            path: path.display().to_string(),
            what: "private key",
        })
}

fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let names = vec!["localhost".to_string(), "voicegate".to_string()];
    let cert = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    let key = PrivateKeyDer::try_from(cert.key_pair.serialize_der())
        .map_err(|e| TlsSetupError::Generate(e.to_string()))?;
    Ok((vec![cert.cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_when_no_files() {
        assert!(server_config(None).is_ok());
    }

    #[test]
    fn unreadable_cert_names_the_key() {
        let err = server_config(Some((
            Path::new("/nonexistent/cert.pem"),
            Path::new("/nonexistent/key.pem"),
        )))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("config: sip.tls_cert: cannot read /nonexistent/cert.pem"),
            "{text}"
        );
    }

    #[test]
    fn loads_pem_files() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("vg-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
        assert!(server_config(Some((&c, &k))).is_ok());
        std::fs::write(&k, "not a key").unwrap();
        assert!(matches!(
            server_config(Some((&c, &k))),
            Err(TlsSetupError::Empty {
                key: "sip.tls_key",
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
