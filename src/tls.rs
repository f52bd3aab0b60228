//! HTTPS on the public listener: the certificate pair is loaded and checked with the config,
//! and served through a resolver whose pair a reload can swap without dropping a connection.
//!
//! rustls speaks TLS 1.2 and 1.3 only (Pingora builds its `ServerConfig` with exactly those
//! versions), so older clients are refused at the handshake.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{load_certs_and_key_files, ClientHello, CryptoProvider, ResolvesServerCert};

/// Loads a PEM certificate chain and private key, and checks that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    pingora::tls::install_default_crypto_provider();
    let (certs, private_key) =
        load_certs_and_key_files(&cert.to_string_lossy(), &key.to_string_lossy())
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "{} holds no PEM certificate or {} no PEM private key",
                    cert.display(),
                    key.display()
                )
            })?;
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider installed")?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    let pair = CertifiedKey::new(certs, signing_key);
    pair.keys_match()
        .map_err(|e| format!("{} does not match {}: {e}", key.display(), cert.display()))?;
    Ok(Arc::new(pair))
}

/// The certificate the public listener presents; a reload replaces it atomically.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// A store serving `pair`.
    pub fn new(pair: Arc<CertifiedKey>) -> Self {
        CertStore {
            current: ArcSwap::new(pair),
        }
    }

    /// Serves `pair` from the next handshake on.
    pub fn replace(&self, pair: Arc<CertifiedKey>) {
        self.current.store(pair);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
