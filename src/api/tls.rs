//! HTTPS: a certificate and key in PEM files, served with rustls (ring as the crypto provider).
//! The files are looked at again at most once every few seconds; when either changed, the pair
//! is loaded afresh for new connections, and a pair that does not load keeps the previous one
//! serving (and is logged).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::{Error, Result};

/// How often the files are checked for changes at most.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The certificate files and the acceptor made from them.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    acceptor: TlsAcceptor,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A server configuration from the PEM files; errors name the file and never quote the key.
fn configure(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let invalid =
        |path: &Path, what: String| Error::Invalid(format!("TLS: {}: {what}", path.display()));
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(cert, format!("cannot read certificates: {e}")))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert, "holds no certificate".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid(key, format!("no PEM private key could be read: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| invalid(key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Certificates {
    /// Loads the pair; fails when either file is unreadable or they do not belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>> {
        let acceptor = configure(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(Loaded {
                acceptor,
                stamps: (modified(cert), modified(key)),
                checked: Instant::now(),
            }),
        }))
    }

    /// The acceptor for a new connection, from the files as they are now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != state.stamps {
                state.stamps = stamps;
                match configure(&self.cert, &self.key) {
                    Ok(acceptor) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                        state.acceptor = acceptor;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the changed TLS files do not load; serving the previous certificate");
                    }
                }
            }
        }
        state.acceptor.clone()
    }
}
