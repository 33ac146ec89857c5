//! TLS on the listener (rustls with ring), with certificate reload.
//!
//! [`EdgeListener`] accepts TCP connections in its own task and runs each TLS
//! handshake in a task of its own, so a slow or silent client never holds up
//! `accept`; finished streams go to axum. Without TLS configured it passes
//! plain TCP streams through. Either way the stream is wrapped in a
//! [`HeadGuard`]: the first byte (the ClientHello with TLS) must come within
//! `client.first_byte_timeout` and the whole first request head, TLS
//! handshake included, within `client.request_head_timeout` of the accept.
//!
//! The certificate comes from [`CertStore`], a rustls cert resolver whose
//! key pair can be swapped while serving: [`CertStore::reload`] reads the
//! files again on SIGHUP and when their modification time changes (checked
//! every `tls.reload_interval`). New handshakes use the new pair; open
//! connections keep theirs. A reload that fails (missing or bad file) keeps
//! the old pair and is logged and counted (`groupcast_tls_reloads_total`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use parking_lot::{Mutex, RwLock};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::request_deadlines::{self, HeadGuard, HeadLimits};

/// Accepted connections waiting for axum (beyond it, accepting pauses).
const ACCEPT_QUEUE: usize = 1024;

/// Read a certificate chain and private key (PEM files) into a key pair.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file {}: no certificate",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls.key_file {}: {e}", key_file.display()))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().map_err(|e| {
        format!(
            "tls.key_file {}: does not match tls.cert_file: {e}",
            key_file.display()
        )
    })?;
    Ok(pair)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The serving key pair, swappable while serving.
#[derive(Debug)]
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl CertStore {
    pub fn open(cert_file: &Path, key_file: &Path) -> Result<CertStore, String> {
        let pair = load_certified_key(cert_file, key_file)?;
        Ok(CertStore {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new((modified(cert_file), modified(key_file))),
        })
    }

    /// Reload from the files. `force`: even when their modification times
    /// did not change (SIGHUP). Returns whether a new pair is now served.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let now = (modified(&self.cert_file), modified(&self.key_file));
        if !force && *self.seen.lock() == now {
            return Ok(false);
        }
        *self.seen.lock() = now;
        let pair = load_certified_key(&self.cert_file, &self.key_file)?;
        *self.current.write() = Arc::new(pair);
        Ok(true)
    }

    /// rustls server configuration serving this store's pair.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// Reload on SIGHUP and when the files change, until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            match self.reload(force) {
                Ok(true) => {
                    tracing::info!("TLS certificate reloaded");
                    metrics::counter!("groupcast_tls_reloads_total", "outcome" => "ok")
                        .increment(1);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("TLS certificate reload failed, keeping the old one: {e}");
                    metrics::counter!("groupcast_tls_reloads_total", "outcome" => "error")
                        .increment(1);
                }
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// A client connection: plain TCP or TLS over TCP, with the deadlines for
/// its first request head. The TLS stream is boxed: inline, its 1 KiB and more of
/// state would be in every plain connection too (an enum is as large as its largest arm).
pub type Io = HeadGuard<Either<TcpStream, Box<TlsStream<TcpStream>>>>;

/// The edge's listener: TCP, optionally TLS; see the module doc.
pub struct EdgeListener {
    rx: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

impl EdgeListener {
    /// Start accepting on `tcp` until `stop` (TLS when `tls` is set).
    pub fn new(
        tcp: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        limits: HeadLimits,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let acceptor = tls.map(TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tcp.accept() => match r {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: back off.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let accepted = Instant::now();
                let _ = stream.set_nodelay(true);
                match &acceptor {
                    None => {
                        let io = HeadGuard::new(Either::Left(stream), accepted, limits, true);
                        if tx.send((io, peer)).await.is_err() {
                            return;
                        }
                    }
                    Some(acceptor) => {
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            let mut first = [0u8; 1];
                            let hello = tokio::time::timeout_at(
                                accepted + limits.first_byte,
                                stream.peek(&mut first),
                            );
                            match hello.await {
                                Ok(Ok(n)) if n > 0 => {}
                                Ok(_) => return, // closed, or failed, before a byte
                                Err(_) => return request_deadlines::timed_out("first_byte"),
                            }
                            let handshake = tokio::time::timeout_at(
                                accepted + limits.request_head,
                                acceptor.accept(stream),
                            );
                            match handshake.await {
                                Ok(Ok(tls)) => {
                                    let io = HeadGuard::new(
                                        Either::Right(Box::new(tls)),
                                        accepted,
                                        limits,
                                        false,
                                    );
                                    let _ = tx.send((io, peer)).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                                    metrics::counter!("groupcast_tls_handshake_failures_total")
                                        .increment(1);
                                }
                                Err(_) => {
                                    request_deadlines::timed_out("request_head");
                                    metrics::counter!("groupcast_tls_handshake_failures_total")
                                        .increment(1);
                                }
                            }
                        });
                    }
                }
            }
        });
        Ok(EdgeListener { rx, local })
    }
}

impl Listener for EdgeListener {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // Stopped: never yield again (axum is shutting down).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client's socket address, as handlers extract it (`ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, EdgeListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, EdgeListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}
