use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};

use super::*;

/// A directory of its own under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "coolpy7-certs-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server certificate for localhost and its key, PEM.
fn server_pem() -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

fn settings(dir: &TempDir, verify: ClientVerify, identity: CertIdentity) -> TlsSettings {
    let (cert, key) = server_pem();
    let ca = {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("CA").pem()
    };
    TlsSettings {
        cert: dir.write("tls.crt", &cert),
        key: dir.write("tls.key", &key),
        client_ca: (verify != ClientVerify::None).then(|| dir.write("ca.crt", &ca)),
        verify,
        identity,
        reload_interval: Duration::from_secs(1),
    }
}

#[test]
fn loads_and_offers_the_alpn_asked_for() {
    let dir = TempDir::new("load");
    let store = CertificateStore::load(settings(&dir, ClientVerify::None, CertIdentity::Off))
        .expect("loads");
    assert!(store.server_config(None).alpn_protocols.is_empty());
    assert_eq!(
        store.server_config(Some(Alpn::Mqtt)).alpn_protocols,
        [b"mqtt".to_vec()]
    );
    assert_eq!(
        store.server_config(Some(Alpn::Http)).alpn_protocols,
        [b"http/1.1".to_vec()]
    );
    let store = CertificateStore::load(settings(
        &dir,
        ClientVerify::Optional,
        CertIdentity::CommonName,
    ))
    .expect("loads with a client CA");
    assert_eq!(store.identity(None), Some(PeerIdentity { username: None }));
}

#[test]
fn files_that_cannot_work_are_refused_with_the_flag_named() {
    let dir = TempDir::new("refuse");
    let good = settings(&dir, ClientVerify::Required, CertIdentity::Off);
    let (_, other_key) = server_pem();
    let cases = [
        (
            TlsSettings {
                cert: dir.0.join("missing.crt"),
                ..good.clone()
            },
            "-tc",
        ),
        (
            TlsSettings {
                key: dir.write("empty.key", ""),
                ..good.clone()
            },
            "-tk",
        ),
        (
            TlsSettings {
                cert: dir.write("garbage.crt", "not a certificate"),
                ..good.clone()
            },
            "no PEM certificate",
        ),
        (
            TlsSettings {
                key: dir.write("other.key", &other_key),
                ..good.clone()
            },
            "-tc",
        ),
        (
            TlsSettings {
                client_ca: Some(dir.write("empty-ca.crt", "")),
                ..good.clone()
            },
            "-tca",
        ),
    ];
    for (settings, expected) in cases {
        match CertificateStore::load(settings) {
            Ok(_) => panic!("loaded files that should fail with {expected:?}"),
            Err(error) => assert!(error.contains(expected), "{error:?} lacks {expected:?}"),
        }
    }
}

#[test]
fn reload_swaps_in_changed_files_and_keeps_the_old_on_a_bad_change() {
    let dir = TempDir::new("reload");
    let settings = settings(&dir, ClientVerify::None, CertIdentity::Off);
    let store = CertificateStore::load(settings.clone()).expect("loads");
    let first = store.server_config(None);
    assert_eq!(store.reload(), Reload::Unchanged);
    assert!(Arc::ptr_eq(&first, &store.server_config(None)));

    // A certificate written before its key: reported once, the old configuration kept.
    let (cert, key) = server_pem();
    std::fs::write(&settings.cert, &cert).expect("write cert");
    assert!(matches!(store.reload(), Reload::Failed(_)));
    assert_eq!(
        store.reload(),
        Reload::Unchanged,
        "a bad file is reported once"
    );
    assert!(Arc::ptr_eq(&first, &store.server_config(None)));

    // The key arrives: the pair loads.
    std::fs::write(&settings.key, &key).expect("write key");
    assert_eq!(store.reload(), Reload::Loaded);
    let second = store.server_config(None);
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(store.reload(), Reload::Unchanged);

    // A file that disappears (a symlink swap in progress) keeps what is loaded.
    std::fs::remove_file(&settings.key).expect("remove key");
    assert!(matches!(store.reload(), Reload::Failed(error) if error.contains("-tk")));
    assert!(Arc::ptr_eq(&second, &store.server_config(None)));
}

#[test]
fn identity_is_the_common_name_or_the_first_san_of_the_best_kind() {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "device-42");
    params.subject_alt_names = vec![
        SanType::URI("spiffe://plant/device-42".try_into().expect("uri")),
        SanType::Rfc822Name("ops@example.com".try_into().expect("email")),
        SanType::DnsName("device-42.example".try_into().expect("dns")),
        SanType::DnsName("second.example".try_into().expect("dns")),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).expect("signed");
    let der = cert.der();
    assert_eq!(
        identity_in(der, CertIdentity::CommonName).as_deref(),
        Some("device-42")
    );
    assert_eq!(
        identity_in(der, CertIdentity::SubjectAltName).as_deref(),
        Some("device-42.example")
    );
    assert_eq!(identity_in(der, CertIdentity::Off), None);
    assert_eq!(identity_in(b"not DER", CertIdentity::CommonName), None);

    // Without DNS names, an e-mail address; without a CN, nothing.
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![
        SanType::URI("spiffe://plant/x".try_into().expect("uri")),
        SanType::Rfc822Name("x@example.com".try_into().expect("email")),
    ];
    let cert = params.signed_by(&key, &issuer).expect("signed");
    assert_eq!(
        identity_in(cert.der(), CertIdentity::SubjectAltName).as_deref(),
        Some("x@example.com")
    );
    assert_eq!(identity_in(cert.der(), CertIdentity::CommonName), None);
}
