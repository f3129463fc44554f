//! The MQTT listeners and their TLS settings, resolved from `-l -tl -wl -wsl -wsp -pp` and
//! `-tc -tk -tca -tv -tcn -tri`. `config` parses the flags; which combinations make sense (a TLS
//! listener needs a certificate, client verification needs a CA) is decided here, with tests.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::ListenAddr;

/// How a listener's clients speak MQTT: the transport under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Plain TCP (`-l`).
    Tcp,
    /// TLS over TCP (`-tl`).
    Tls,
    /// WebSocket over TCP (`-wl`).
    Ws,
    /// WebSocket over TLS (`-wsl`).
    Wss,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 4] = [
        ListenerKind::Tcp,
        ListenerKind::Tls,
        ListenerKind::Ws,
        ListenerKind::Wss,
    ];

    /// The name used in `-pp`, in logs and as the metrics' `listener` label.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    pub fn uses_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }

    fn flag(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "-l",
            ListenerKind::Tls => "-tl",
            ListenerKind::Ws => "-wl",
            ListenerKind::Wss => "-wsl",
        }
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One MQTT listener to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub kind: ListenerKind,
    pub addr: ListenAddr,
    /// Every connection must start with a PROXY protocol v1 or v2 header (`-pp`).
    pub proxy_protocol: bool,
}

/// Whether TLS clients must present a certificate (`-tv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientVerify {
    /// None is asked for.
    None,
    /// One is asked for and verified when given; a client without one is let in.
    Optional,
    /// A client without a valid one fails the TLS handshake.
    Required,
}

/// What of a verified client certificate becomes the MQTT username (`-tcn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertIdentity {
    /// The username is the one CONNECT carries.
    #[default]
    Off,
    /// The subject's Common Name.
    CommonName,
    /// The first Subject Alternative Name: a DNS name, else an e-mail address, else a URI.
    SubjectAltName,
}

/// The files and rules of the TLS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's own certificate first (`-tc`).
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1 (`-tk`).
    pub key: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to (`-tca`).
    pub client_ca: Option<PathBuf>,
    pub verify: ClientVerify,
    pub identity: CertIdentity,
    /// How often the files are checked for changes (`-tri`).
    pub reload_interval: Duration,
}

/// The flags as given, before their rules are checked.
#[derive(Debug, Default)]
pub struct ListenerFlags {
    pub tcp: Option<ListenAddr>,
    pub tls: Option<ListenAddr>,
    pub ws: Option<ListenAddr>,
    pub wss: Option<ListenAddr>,
    pub proxy: Vec<ListenerKind>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub verify: Option<ClientVerify>,
    pub identity: CertIdentity,
    pub reload_secs: u64,
}

impl ListenerFlags {
    /// The listeners in `ListenerKind::ALL` order, and the TLS settings when a TLS listener is
    /// on; an error message naming the flag otherwise.
    pub fn resolve(self) -> Result<(Vec<Listener>, Option<TlsSettings>), String> {
        let listeners: Vec<Listener> = [
            (ListenerKind::Tcp, self.tcp),
            (ListenerKind::Tls, self.tls),
            (ListenerKind::Ws, self.ws),
            (ListenerKind::Wss, self.wss),
        ]
        .into_iter()
        .filter_map(|(kind, addr)| {
            addr.map(|addr| Listener {
                kind,
                addr,
                proxy_protocol: self.proxy.contains(&kind),
            })
        })
        .collect();
        if listeners.is_empty() {
            return Err(
                "every MQTT listener is off: give at least one of -l, -tl, -wl, -wsl \
                 (-l=nil turns the plain TCP one off)"
                    .to_string(),
            );
        }
        if let Some(kind) = self
            .proxy
            .iter()
            .find(|kind| !listeners.iter().any(|l| l.kind == **kind))
        {
            return Err(format!(
                "-pp names the {kind} listener, which is off (turn it on with {})",
                kind.flag()
            ));
        }
        for (i, a) in listeners.iter().enumerate() {
            if let Some(b) = listeners[i + 1..]
                .iter()
                .find(|b| a.addr.port != 0 && a.addr == b.addr)
            {
                return Err(format!(
                    "{} and {} both listen on {}",
                    a.kind.flag(),
                    b.kind.flag(),
                    a.addr
                ));
            }
        }
        let tls_on = listeners.iter().any(|l| l.kind.uses_tls());
        let verify = match (self.verify, &self.client_ca) {
            (Some(ClientVerify::Optional | ClientVerify::Required), None) => {
                return Err(
                    "-tv=optional and -tv=required need -tca (the CA bundle client \
                     certificates are verified against)"
                        .to_string(),
                )
            }
            (Some(verify), _) => verify,
            (None, Some(_)) => ClientVerify::Required,
            (None, None) => ClientVerify::None,
        };
        if verify == ClientVerify::None && self.identity != CertIdentity::Off {
            return Err("-tcn needs client certificates: set -tca (and -tv)".to_string());
        }
        if !tls_on {
            let given = [
                ("-tc", self.cert.is_some()),
                ("-tk", self.key.is_some()),
                ("-tca", self.client_ca.is_some()),
                ("-tv", self.verify.is_some()),
                ("-tcn", self.identity != CertIdentity::Off),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
                return Err(format!(
                    "{flag} is for the TLS listeners, and none is on: add -tl or -wsl"
                ));
            }
            return Ok((listeners, None));
        }
        let (Some(cert), Some(key)) = (self.cert, self.key) else {
            return Err(
                "-tl and -wsl need a certificate chain (-tc) and its key (-tk), \
                 as PEM files"
                    .to_string(),
            );
        };
        Ok((
            listeners,
            Some(TlsSettings {
                cert,
                key,
                client_ca: self.client_ca,
                verify,
                identity: self.identity,
                reload_interval: Duration::from_secs(self.reload_secs),
            }),
        ))
    }
}

/// `-pp`'s listeners (a type of its own: clap would take a `Vec` for a repeated flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyListeners(pub Vec<ListenerKind>);

/// `-pp`: a comma-separated list of listener names; empty (or "nil") for none.
pub fn parse_proxy_listeners(s: &str) -> Result<ProxyListeners, String> {
    parse_listener_names(s).map(ProxyListeners)
}

fn parse_listener_names(s: &str) -> Result<Vec<ListenerKind>, String> {
    let mut kinds = Vec::new();
    if s.trim().is_empty() || s.eq_ignore_ascii_case("nil") {
        return Ok(kinds);
    }
    for name in s.split(',').map(str::trim) {
        let kind = ListenerKind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown listener {name:?}: expected tcp, tls, ws or wss"))?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

pub fn parse_client_verify(s: &str) -> Result<ClientVerify, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" => Ok(ClientVerify::None),
        "optional" => Ok(ClientVerify::Optional),
        "required" => Ok(ClientVerify::Required),
        _ => Err("expected none, optional or required".to_string()),
    }
}

pub fn parse_cert_identity(s: &str) -> Result<CertIdentity, String> {
    match s.to_ascii_lowercase().as_str() {
        "off" | "none" | "" => Ok(CertIdentity::Off),
        "cn" => Ok(CertIdentity::CommonName),
        "san" => Ok(CertIdentity::SubjectAltName),
        _ => Err("expected off, cn or san".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Option<ListenAddr> {
        Some(ListenAddr { host: None, port })
    }

    fn tls_flags() -> ListenerFlags {
        ListenerFlags {
            tcp: addr(1883),
            tls: addr(8883),
            cert: Some("cert.pem".into()),
            key: Some("key.pem".into()),
            reload_secs: 5,
            ..ListenerFlags::default()
        }
    }

    #[test]
    fn plain_tcp_alone_needs_no_tls_settings() {
        let (listeners, tls) = ListenerFlags {
            tcp: addr(1883),
            ..ListenerFlags::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].kind, ListenerKind::Tcp);
        assert!(!listeners[0].proxy_protocol);
        assert_eq!(tls, None);
    }

    #[test]
    fn every_listener_with_proxy_protocol_on_some() {
        let flags = ListenerFlags {
            ws: addr(8083),
            wss: addr(8084),
            proxy: vec![ListenerKind::Tls, ListenerKind::Wss],
            ..tls_flags()
        };
        let (listeners, tls) = flags.resolve().expect("valid");
        let kinds: Vec<_> = listeners
            .iter()
            .map(|l| (l.kind, l.proxy_protocol))
            .collect();
        assert_eq!(
            kinds,
            [
                (ListenerKind::Tcp, false),
                (ListenerKind::Tls, true),
                (ListenerKind::Ws, false),
                (ListenerKind::Wss, true)
            ]
        );
        let tls = tls.expect("TLS settings");
        assert_eq!(tls.verify, ClientVerify::None);
        assert_eq!(tls.reload_interval, Duration::from_secs(5));
    }

    #[test]
    fn a_ca_alone_means_client_certificates_are_required() {
        let flags = ListenerFlags {
            client_ca: Some("ca.pem".into()),
            ..tls_flags()
        };
        let tls = flags.resolve().expect("valid").1.expect("TLS");
        assert_eq!(tls.verify, ClientVerify::Required);
        let flags = ListenerFlags {
            client_ca: Some("ca.pem".into()),
            verify: Some(ClientVerify::Optional),
            identity: CertIdentity::CommonName,
            ..tls_flags()
        };
        let tls = flags.resolve().expect("valid").1.expect("TLS");
        assert_eq!(tls.verify, ClientVerify::Optional);
        assert_eq!(tls.identity, CertIdentity::CommonName);
    }

    #[test]
    fn combinations_that_cannot_work_are_refused() {
        let cases: Vec<(ListenerFlags, &str)> = vec![
            (ListenerFlags::default(), "every MQTT listener is off"),
            (
                ListenerFlags {
                    tcp: addr(1883),
                    tls: addr(8883),
                    ..ListenerFlags::default()
                },
                "-tc",
            ),
            (
                ListenerFlags {
                    key: None,
                    ..tls_flags()
                },
                "-tk",
            ),
            (
                ListenerFlags {
                    verify: Some(ClientVerify::Required),
                    ..tls_flags()
                },
                "need -tca",
            ),
            (
                ListenerFlags {
                    identity: CertIdentity::CommonName,
                    ..tls_flags()
                },
                "-tcn needs client certificates",
            ),
            (
                ListenerFlags {
                    tcp: addr(1883),
                    cert: Some("cert.pem".into()),
                    ..ListenerFlags::default()
                },
                "-tc is for the TLS listeners",
            ),
            (
                ListenerFlags {
                    proxy: vec![ListenerKind::Ws],
                    ..tls_flags()
                },
                "-pp names the ws listener",
            ),
            (
                ListenerFlags {
                    tls: addr(1883),
                    ..tls_flags()
                },
                "both listen on :1883",
            ),
        ];
        for (flags, expected) in cases {
            let error = flags.resolve().expect_err(expected);
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn ephemeral_ports_may_repeat() {
        let flags = ListenerFlags {
            tcp: addr(0),
            tls: addr(0),
            ..tls_flags()
        };
        assert!(flags.resolve().is_ok());
    }

    #[test]
    fn proxy_listener_lists_parse() {
        assert_eq!(parse_listener_names(""), Ok(vec![]));
        assert_eq!(parse_listener_names("nil"), Ok(vec![]));
        assert_eq!(
            parse_listener_names("tcp, WSS,tcp"),
            Ok(vec![ListenerKind::Tcp, ListenerKind::Wss])
        );
        assert!(parse_listener_names("tcp,mqtt")
            .expect_err("unknown")
            .contains("\"mqtt\""));
        assert_eq!(parse_client_verify("Optional"), Ok(ClientVerify::Optional));
        assert!(parse_client_verify("maybe").is_err());
        assert_eq!(parse_cert_identity("san"), Ok(CertIdentity::SubjectAltName));
        assert!(parse_cert_identity("subject").is_err());
    }
}
