//! The cluster's private CA and node certificates (`groupcast certs`), and
//! the mutual-TLS configurations built from them.
//!
//! Every replica and every edge presents a certificate signed by the cluster
//! CA and accepts only peers that do. `certs init` writes `ca.pem` and
//! `ca-key.pem`; `certs issue NAME` writes `NAME.pem` and `NAME-key.pem`
//! (server and client auth, SANs: NAME, localhost, 127.0.0.1, ::1 and any
//! `--san`). These are for local clusters; in Kubernetes the same file names
//! are mounted from a Secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol of the membership QUIC transport.
pub const ALPN: &[u8] = b"groupcast-membership/1";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists (pass --force to overwrite)")]
    Exists(PathBuf),
    #[error("invalid certificate name {0:?}: use letters, digits, '.', '-' or '_'")]
    BadName(String),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The three PEM files a replica or an edge needs, and the name replicas'
/// certificates are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name every replica's certificate must hold when this side
    /// connects to one. `None`: the host part of the address dialled (a
    /// replica reached at `10.0.0.7:7500` must then hold that IP). Set it
    /// where addresses are not known when certificates are made, e.g.
    /// Kubernetes Service IPs (the Helm chart issues one name to all).
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// The file names `certs init` / `certs issue NAME` write into `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            server_name: None,
        }
    }

    /// Checks replicas against `name` instead of the dialled host; an empty
    /// name keeps the default.
    pub fn with_server_name(mut self, name: Option<String>) -> TlsFiles {
        self.server_name = name.filter(|n| !n.is_empty());
        self
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// The CA's parameters. `issue` rebuilds the issuer from these plus the CA
/// key, so they must not change between `init` and `issue`.
fn ca_params() -> Result<CertificateParams, CertError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, "Groupcast membership CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// Creates the cluster CA in `dir` (`ca.pem`, `ca-key.pem`).
pub fn init(dir: &Path, force: bool) -> Result<PathBuf, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    for p in [&cert_path, &key_path] {
        if p.exists() && !force {
            return Err(CertError::Exists(p.clone()));
        }
    }
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_file(&key_path, &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    Ok(cert_path)
}

/// Issues `NAME.pem` / `NAME-key.pem` in `dir`, signed by the CA there.
pub fn issue(dir: &Path, name: &str, extra_sans: &[String]) -> Result<TlsFiles, CertError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(CertError::BadName(name.to_string()));
    }
    let ca_key_path = dir.join("ca-key.pem");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|source| CertError::Io {
        path: ca_key_path.clone(),
        source,
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| CertError::Pem {
        path: ca_key_path,
        reason: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params()?, ca_key);

    let mut sans = vec![name.to_string(), "localhost".into()];
    sans.extend(extra_sans.iter().cloned());
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    for san in &sans {
        p.subject_alt_names
            .push(match san.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into()?),
            });
    }
    for ip in ["127.0.0.1", "::1"] {
        p.subject_alt_names
            .push(SanType::IpAddress(ip.parse().expect("literal")));
    }
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    let files = TlsFiles::in_dir(dir, name);
    write_file(&files.key, &key.serialize_pem(), true)?;
    write_file(&files.cert, &cert.pem(), false)?;
    Ok(files)
}

struct Loaded {
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> CertError {
    CertError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn load(files: &TlsFiles) -> Result<Loaded, CertError> {
    let certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, CertError> {
        let v = CertificateDer::pem_file_iter(path)
            .map_err(|e| pem_err(path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(path, e))?;
        if v.is_empty() {
            return Err(pem_err(path, "no certificate in the file"));
        }
        Ok(v)
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&files.ca)? {
        roots.add(c).map_err(|e| pem_err(&files.ca, e))?;
    }
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_err(&files.key, e))?;
    Ok(Loaded {
        roots: Arc::new(roots),
        chain,
        key,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(std::time::Duration::from_secs(10)).expect("in range"),
    ));
    Arc::new(t)
}

/// QUIC server side: presents our certificate, requires a client
/// certificate signed by the cluster CA.
pub fn quic_server(files: &TlsFiles) -> Result<quinn::ServerConfig, CertError> {
    let l = load(files)?;
    let tls_err = |e: rustls::Error| CertError::Tls(e.to_string());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(l.roots, provider())
        .build()
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(l.chain, l.key)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(q));
    server.transport_config(transport());
    Ok(server)
}

/// QUIC client side: trusts only the cluster CA, presents our certificate.
pub fn quic_client(files: &TlsFiles) -> Result<quinn::ClientConfig, CertError> {
    let l = load(files)?;
    let tls_err = |e: rustls::Error| CertError::Tls(e.to_string());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(l.roots)
        .with_client_auth_cert(l.chain, l.key)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| CertError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(q));
    client.transport_config(transport());
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_issue_and_build_configs() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        assert!(matches!(init(dir.path(), false), Err(CertError::Exists(_))));
        let files = issue(dir.path(), "node-1", &["gc-0.gc.svc".into()]).unwrap();
        quic_server(&files).unwrap();
        quic_client(&files).unwrap();
        assert!(matches!(
            issue(dir.path(), "../x", &[]),
            Err(CertError::BadName(_))
        ));
        let missing = TlsFiles::in_dir(dir.path(), "nobody");
        let e = quic_client(&missing).unwrap_err().to_string();
        assert!(e.contains("nobody.pem"), "{e}");
    }
}
