//! TLS material for both listeners: certificates from PEM files, or a self-signed
//! development certificate (`--dev`) whose PEM clients add as a trust root.
//! All TLS runs on rustls with the `ring` provider (the same provider the SDK uses on
//! mobile, where aws-lc does not build).

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring::default_provider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up. The message names the file or setting at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Generating the development certificate failed.
    #[error("generating the development certificate: {0}")]
    Generate(String),
    /// rustls refused the material or settings.
    #[error("tls setup: {0}")]
    Rustls(String),
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsMaterial {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Pem {
                what: "certificate",
                path: cert.display().to_string(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                what: "certificate",
                path: cert.display().to_string(),
                reason: "no certificate in the file".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
            what: "private key",
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(TlsMaterial { chain, key })
    }

    /// A self-signed certificate for `hosts` (names or IP addresses), and its PEM for
    /// clients to trust.
    pub fn self_signed(hosts: &[&str]) -> Result<(Self, String), TlsError> {
        let cert = rcgen::generate_simple_self_signed(
            hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        )
        .map_err(|e| TlsError::Generate(e.to_string()))?;
        let pem = cert.cert.pem();
        let der = cert.cert.der().clone();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok((
            TlsMaterial {
                chain: vec![der],
                key,
            },
            pem,
        ))
    }

    /// The rustls server config for the HTTPS listener (ALPN `h2`, `http/1.1`).
    pub fn https_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The rustls server config for QUIC: TLS 1.3 only, ALPN [`tern_protocol::ALPN`].
    pub fn quic_server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        cfg.alpn_protocols = vec![tern_protocol::ALPN.to_vec()];
        cfg.max_early_data_size = 0;
        Ok(cfg)
    }
}

/// A rustls client config trusting exactly `roots` (PEM), for tests, tools and the
/// load generator. QUIC clients set `alpn` to [`tern_protocol::ALPN`].
pub fn client_config(roots_pem: &str, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Rustls(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// Installs ring as the process-wide rustls provider (needed by libraries that build
/// their TLS configs themselves, such as reqwest). Idempotent.
pub fn install_crypto_provider() {
    let _ = default_provider().install_default();
}
