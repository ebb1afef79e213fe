//! TLS, both ways. Towards callers: the gRPC listener's rustls configuration (certificate,
//! key, and for mutual TLS the CA that client certificates must chain to), held behind a lock
//! that a reload (SIGHUP) swaps, so new connections get the new certificate while open ones
//! keep theirs; a failed reload keeps the old configuration. The accept loop that handshakes
//! with it, bounded as the plain one is, is [`crate::accept`].
//! Towards GWS: extra trust roots (a private CA) and a client identity for reqwest, built in
//! one function from the configuration.

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("--tls-client-ca: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
    #[error("{0}")]
    Reqwest(String),
}

fn file_error(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, pem_why(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, pem_why(e)))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, pem_why(e)))
}

fn pem_why(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not valid PEM: {other}"),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The files of the listener's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, clients must present a certificate issued by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Reads the files and builds the rustls configuration (HTTP/2 only, as gRPC needs).
pub fn server_config(files: &ServerTlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| file_error(path, e))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_error(&files.key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The listener's TLS configuration, replaceable while serving. A cloneable handle.
#[derive(Debug, Clone)]
pub struct ReloadableTls {
    files: Arc<ServerTlsFiles>,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl ReloadableTls {
    /// Loads the files now: a configuration that cannot load is refused before binding.
    pub fn load(files: ServerTlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            files: Arc::new(files),
            current: Arc::new(RwLock::new(config)),
        })
    }

    /// Reads the files again. On success new connections use the new configuration; on
    /// failure the old one stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }
}

/// Reloads `tls` on every SIGHUP, logging the outcome, until the returned future is dropped.
/// Without TLS the signal is only logged (its default action would end the process
/// undrained). The handler is installed by this call, before the future first runs, so a
/// SIGHUP that arrives as soon as the gateway announces itself is already caught.
pub fn reload_on_sighup(
    tls: Option<ReloadableTls>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hup = match hup {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGHUP; TLS files will not be reloaded");
                    return;
                }
            };
            while hup.recv().await.is_some() {
                let Some(tls) = &tls else {
                    tracing::info!("SIGHUP: no TLS files to reload");
                    continue;
                };
                match tls.reload() {
                    Ok(()) => tracing::info!(cert = %tls.files().cert.display(),
                        "SIGHUP: TLS certificate reloaded; new connections use it"),
                    Err(error) => tracing::error!(%error,
                        "SIGHUP: TLS reload failed; keeping the previous certificate"),
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tls;
            std::future::pending::<()>().await;
        }
    }
}

/// What the GWS client needs for HTTPS beyond the system's trust: extra roots and a client
/// identity. Empty when neither is configured.
#[derive(Clone, Default)]
pub struct UpstreamTls {
    roots: Vec<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
}

// By hand: reqwest's types are not `Debug`, and the key must never be printed anyway.
impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("roots", &self.roots.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

impl UpstreamTls {
    /// Reads `--gws-ca` (one or more PEM certificates) and `--gws-client-cert` with
    /// `--gws-client-key` (which go together).
    pub fn load(
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let roots = match ca {
            None => Vec::new(),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| file_error(path, e))?;
                read_certs(path)?;
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| file_error(path, e))?
            }
        };
        let identity = match (client_cert, client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|e| file_error(cert, e))?;
                read_certs(cert)?;
                read_key(key)?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| file_error(key, e))?);
                Some(reqwest::Identity::from_pem(&pem).map_err(|e| file_error(cert, e))?)
            }
            _ => {
                return Err(TlsError::Reqwest(
                    "--gws-client-cert and --gws-client-key go together".into(),
                ));
            }
        };
        Ok(Self { roots, identity })
    }

    /// Adds the roots (to the system's) and the identity to a client under construction.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let builder = builder.tls_certs_merge(self.roots.iter().cloned());
        match &self.identity {
            Some(identity) => builder.identity(identity.clone()),
            None => builder,
        }
    }
}
