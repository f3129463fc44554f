//! The TLS listeners' certificate, key and client CAs: loaded from PEM files at start, reloaded
//! when the files change, and turned into the rustls configurations handshakes use.
//!
//! The files are read again every `-tri` seconds and on SIGHUP, and compared by content (a
//! SHA-256 of all three): Kubernetes updates a mounted Secret by swapping a symlink, and
//! cert-manager renews by rewriting the Secret, and neither reliably changes a file's mtime as
//! seen through the link. A change that loads is swapped in at once (handshakes that start
//! after it use it; established connections keep theirs); one that does not (a key that does
//! not match, a half-written file) is logged once and the old configuration kept, and it is
//! tried again at every check, so that a certificate written before its key loads when the key
//! arrives.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tracing::{info, warn};

use super::tls::Alpn;
use crate::config::{CertIdentity, ClientVerify, TlsSettings};

/// What the client certificate says about the client, when `-tcn` is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The MQTT username the connection gets in place of CONNECT's: the certificate's CN or
    /// SAN, or `None` (no username) when the client presented no certificate or one without
    /// that field. A client may never choose its own name when certificates name clients.
    pub username: Option<String>,
}

/// The configurations of one load: the same certificate and client verification, one per ALPN
/// answer.
struct Configs {
    no_alpn: Arc<ServerConfig>,
    mqtt: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// What the last check of the files found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Loaded,
    /// The files changed but do not load; the previous configuration stays.
    Failed(String),
}

/// The TLS configuration in force, and what it was loaded from.
pub struct CertificateStore {
    settings: TlsSettings,
    configs: ArcSwap<Configs>,
    /// The digest of the files in force, and of the last content that failed to load (so that
    /// a bad file is reported once, not at every check).
    digests: Mutex<([u8; 32], Option<[u8; 32]>)>,
}

/// The files' contents.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Files, String> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).map_err(|error| format!("{flag} {}: {error}", path.display()))
        };
        Ok(Files {
            cert: read("-tc", &settings.cert)?,
            key: read("-tk", &settings.key)?,
            client_ca: match &settings.client_ca {
                Some(path) => Some(read("-tca", path)?),
                None => None,
            },
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let part = part.map_or(&[][..], Vec::as_slice);
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }
}

fn build(files: &Files, settings: &TlsSettings) -> Result<Configs, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("-tc {}: {error}", settings.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "-tc {}: no PEM certificate in it",
            settings.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|error| {
        format!(
            "-tk {}: no usable PEM private key: {error}",
            settings.key.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| error.to_string())?;
    let builder = match (&files.client_ca, settings.verify) {
        (Some(ca), ClientVerify::Optional | ClientVerify::Required) => {
            let verifier = client_verifier(ca, settings, provider)?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let base = builder.with_single_cert(chain, key).map_err(|error| {
        format!(
            "-tc {} with -tk {}: {error}",
            settings.cert.display(),
            settings.key.display()
        )
    })?;
    let with_alpn = |alpn: Alpn| {
        let mut config = base.clone();
        config.alpn_protocols = vec![alpn.protocol().to_vec()];
        Arc::new(config)
    };
    Ok(Configs {
        mqtt: with_alpn(Alpn::Mqtt),
        http: with_alpn(Alpn::Http),
        no_alpn: Arc::new(base),
    })
}

fn client_verifier(
    ca: &[u8],
    settings: &TlsSettings,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let path = settings
        .client_ca
        .as_deref()
        .map(Path::display)
        .map(|path| path.to_string())
        .unwrap_or_default();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        let cert = cert.map_err(|error| format!("-tca {path}: {error}"))?;
        roots
            .add(cert)
            .map_err(|error| format!("-tca {path}: {error}"))?;
    }
    if roots.is_empty() {
        return Err(format!("-tca {path}: no PEM certificate in it"));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if settings.verify == ClientVerify::Optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|error| format!("-tca {path}: {error}"))
}

impl CertificateStore {
    /// Loads the files named by `settings`; an error names the flag and file at fault.
    pub fn load(settings: TlsSettings) -> Result<CertificateStore, String> {
        let files = Files::read(&settings)?;
        let configs = build(&files, &settings)?;
        Ok(CertificateStore {
            digests: Mutex::new((files.digest(), None)),
            configs: ArcSwap::from_pointee(configs),
            settings,
        })
    }

    /// The configuration a handshake starting now uses, agreeing to `alpn` when it is given.
    pub fn server_config(&self, alpn: Option<Alpn>) -> Arc<ServerConfig> {
        let configs = self.configs.load();
        match alpn {
            None => configs.no_alpn.clone(),
            Some(Alpn::Mqtt) => configs.mqtt.clone(),
            Some(Alpn::Http) => configs.http.clone(),
        }
    }

    /// Reads the files and swaps in what they hold if it changed and loads.
    pub fn reload(&self) -> Reload {
        let files = match Files::read(&self.settings) {
            Ok(files) => files,
            Err(error) => return self.failed(None, error),
        };
        let digest = files.digest();
        if self.digests.lock().0 == digest {
            return Reload::Unchanged;
        }
        match build(&files, &self.settings) {
            Ok(configs) => {
                self.configs.store(Arc::new(configs));
                *self.digests.lock() = (digest, None);
                Reload::Loaded
            }
            Err(error) => self.failed(Some(digest), error),
        }
    }

    /// Reports a failed reload once per content (`None`: the files could not be read).
    fn failed(&self, digest: Option<[u8; 32]>, error: String) -> Reload {
        let mut digests = self.digests.lock();
        let key = digest.unwrap_or([0; 32]);
        if digests.1 == Some(key) {
            return Reload::Unchanged;
        }
        digests.1 = Some(key);
        Reload::Failed(error)
    }

    /// The identity `-tcn` takes from a verified client certificate; `None` when `-tcn` is off.
    pub fn identity(&self, certificate: Option<&CertificateDer<'_>>) -> Option<PeerIdentity> {
        if self.settings.identity == CertIdentity::Off {
            return None;
        }
        Some(PeerIdentity {
            username: certificate.and_then(|cert| identity_in(cert, self.settings.identity)),
        })
    }
}

/// The CN, or the first DNS / e-mail / URI Subject Alternative Name, of a certificate.
fn identity_in(certificate: &[u8], field: CertIdentity) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(certificate).ok()?;
    match field {
        CertIdentity::Off => None,
        CertIdentity::CommonName => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        CertIdentity::SubjectAltName => {
            let san = cert.subject_alternative_name().ok()??;
            let text = |name: &GeneralName<'_>| match name {
                GeneralName::DNSName(text) => Some((0, text.to_string())),
                GeneralName::RFC822Name(text) => Some((1, text.to_string())),
                GeneralName::URI(text) => Some((2, text.to_string())),
                _ => None,
            };
            // The first of the best kind: min_by_key keeps the first of equal keys.
            san.value
                .general_names
                .iter()
                .filter_map(text)
                .min_by_key(|(rank, _)| *rank)
                .map(|(_, text)| text)
        }
    }
}

/// Checks the files every `-tri` seconds and on SIGHUP (`hangup`) until `stop` turns true,
/// logging what each reload did.
pub async fn watch_files(
    store: Arc<CertificateStore>,
    hangup: Option<Signal>,
    stop: watch::Receiver<bool>,
) {
    let interval = store.settings.reload_interval;
    let check = Arc::new(move || store.reload());
    crate::file_watch::watch(
        interval,
        hangup,
        stop,
        check,
        |cause, result| match result {
            Reload::Unchanged => {}
            Reload::Loaded => info!(cause, "TLS certificate reloaded"),
            Reload::Failed(error) => {
                warn!(cause, %error, "TLS files changed but do not load; keeping the previous ones")
            }
        },
    )
    .await
}

/// Takes SIGHUP when there is nothing to reload (no TLS listener); logs it.
pub async fn ignore_hangups(mut hangup: Signal, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            Some(()) = hangup.recv() => info!("SIGHUP: nothing to reload (no TLS listener)"),
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests;
