//! Optional TLS on both ports. On one host one certificate is enough: a self-signed certificate
//! for `localhost` and 127.0.0.1, kept with the secrets (`tls.pem` in the auth dir, created at
//! first use), which every node serves ([`ServerTls`]: the certificate and its private key) and
//! every replica and client trusts ([`ClientTls`]: the certificate alone).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The name the certificate is for, and that clients check.
const SERVER_NAME: &str = "localhost";

/// The file in the auth dir that holds the certificate, then the nodes' private key.
pub const PEM_FILE: &str = "tls.pem";

/// The PEM marker where the key starts in `tls.pem` (the certificate comes first).
const KEY_MARKER: &str = "-----BEGIN PRIVATE KEY-----";

const CERT_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const CERT_END: &str = "-----END CERTIFICATE-----";

/// The most of a certificate file a client reads, in bytes: a self-signed certificate takes
/// about 600.
pub const MAX_CERT_FILE_BYTES: u64 = 64 * 1024;

/// Why a certificate could not be made, read or dialled with.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The key or the certificate could not be made.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The text has no private key after the certificate.
    #[error("no private key (expected a certificate, then a PKCS#8 key)")]
    NoKey,
    /// The text has no PEM certificate (before the key, when there is one).
    #[error("no certificate (expected a PEM block {CERT_BEGIN} … {CERT_END})")]
    NoCertificate,
    /// The certificate file does not exist.
    #[error("no TLS certificate: {} does not exist (a node started with --tls creates it)", path.display())]
    Missing { path: PathBuf },
    /// The certificate file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Someone other than this user (or root) could replace the certificate, and so choose whom
    /// the client trusts.
    #[error("{} belongs to uid {owner}, not to this user or root", path.display())]
    NotOwned { path: PathBuf, owner: u32 },
    /// As [`TlsError::NotOwned`]: others may write the file.
    #[error("{} may be written by other users (mode {mode:o}); run chmod go-w on it", path.display())]
    Writable { path: PathBuf, mode: u32 },
    /// The address or the TLS configuration cannot make an endpoint.
    #[error("cannot dial {addr}: {source}")]
    Endpoint {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
}

/// A node's certificate and private key, in PEM.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

impl ServerTls {
    /// A new self-signed certificate for `localhost` and 127.0.0.1.
    ///
    /// # Errors
    /// [`TlsError::Generate`]: the key or the certificate could not be made.
    pub fn generate() -> Result<Self, TlsError> {
        let names = vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()];
        let made = rcgen::generate_simple_self_signed(names)?;
        Ok(Self {
            cert_pem: made.cert.pem(),
            key_pem: made.signing_key.serialize_pem(),
        })
    }

    /// The certificate, then the key, as `tls.pem` holds them.
    pub fn to_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// Reads what [`Self::to_pem`] wrote.
    ///
    /// # Errors
    /// [`TlsError::NoKey`] or [`TlsError::NoCertificate`]: the text is not a certificate
    /// followed by a private key.
    pub fn from_pem(text: &str) -> Result<Self, TlsError> {
        let at = text.find(KEY_MARKER).ok_or(TlsError::NoKey)?;
        let (cert, key) = text.split_at(at);
        if !cert.contains(CERT_BEGIN) {
            return Err(TlsError::NoCertificate);
        }
        Ok(Self {
            cert_pem: cert.to_string(),
            key_pem: key.to_string(),
        })
    }

    /// What a node serves.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// The certificate alone, as a replica or a client that trusts it holds it.
    pub fn trust(&self) -> ClientTls {
        ClientTls {
            cert_pem: self.cert_pem.clone(),
        }
    }

    /// What a replica or client that trusts this certificate dials with.
    pub fn client_config(&self) -> ClientTlsConfig {
        self.trust().client_config()
    }
}

/// The certificate a client trusts: the nodes' own, without their private key, which a client
/// never needs and never reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// One or more PEM certificate blocks.
    cert_pem: String,
}

impl ClientTls {
    /// The certificates in PEM `text`, up to the first private key: a private key and whatever
    /// follows it are skipped, never kept. So both `tls.pem` (certificate, then key) and a
    /// file with the certificate alone will do.
    ///
    /// # Errors
    /// [`TlsError::NoCertificate`]: no whole certificate before any key.
    pub fn from_pem(text: &str) -> Result<Self, TlsError> {
        let mut scan = CertScan::default();
        for line in text.lines() {
            if !scan.line(line) {
                break;
            }
        }
        scan.finish()
    }

    /// Reads the certificate from the file at `path` (the auth dir's [`PEM_FILE`]), up to the
    /// first private key and at most [`MAX_CERT_FILE_BYTES`]: the key after the certificate is
    /// never read. The file must belong to this user or root and be writable by nobody else,
    /// since whoever can change it chooses whom the client trusts.
    ///
    /// # Errors
    /// [`TlsError::Missing`] when there is no such file; [`TlsError::NotOwned`] or
    /// [`TlsError::Writable`] when others could change it; [`TlsError::Io`] when it cannot be
    /// read; [`TlsError::NoCertificate`] as for [`Self::from_pem`].
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        let io = |source| TlsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TlsError::Missing {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(io(e)),
        };
        let meta = file.metadata().map_err(io)?;
        let me = rustix::process::getuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(TlsError::NotOwned {
                path: path.to_path_buf(),
                owner: meta.uid(),
            });
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(TlsError::Writable {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut scan = CertScan::default();
        let mut reader = BufReader::new(file.take(MAX_CERT_FILE_BYTES));
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(io)? == 0 || !scan.line(&line) {
                break;
            }
        }
        scan.finish()
    }

    /// What a client dials with: TLS that trusts exactly this certificate, for `localhost`.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cert_pem))
            .domain_name(SERVER_NAME)
    }
}

/// Collects the certificate blocks of PEM text, line by line, until a private key begins.
#[derive(Default)]
struct CertScan {
    /// Whole certificate blocks, each line ending with a newline.
    certs: String,
    /// The lines of the block being read, when inside one.
    open: Option<String>,
}

impl CertScan {
    /// Takes one line; `false` once a private key begins, when nothing more is to be read.
    fn line(&mut self, line: &str) -> bool {
        let line = line.trim_end();
        if line.starts_with("-----BEGIN ") && line.contains("PRIVATE KEY") {
            return false;
        }
        if line == CERT_BEGIN {
            self.open = Some(String::new());
        }
        if let Some(block) = &mut self.open {
            block.push_str(line);
            block.push('\n');
            if line == CERT_END {
                self.certs.push_str(block);
                self.open = None;
            }
        }
        true
    }

    fn finish(self) -> Result<ClientTls, TlsError> {
        if self.certs.is_empty() {
            Err(TlsError::NoCertificate)
        } else {
            Ok(ClientTls {
                cert_pem: self.certs,
            })
        }
    }
}

/// The endpoint a client dials for `addr`: plain HTTP/2, or TLS that trusts `trust`'s
/// certificate.
///
/// # Errors
/// [`TlsError::Endpoint`]: the address or the TLS configuration is unusable.
pub fn client_endpoint(addr: SocketAddr, trust: Option<&ClientTls>) -> Result<Endpoint, TlsError> {
    let scheme = if trust.is_some() { "https" } else { "http" };
    let unusable = |source| TlsError::Endpoint { addr, source };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(unusable)?;
    match trust {
        Some(t) => endpoint.tls_config(t.client_config()).map_err(unusable),
        None => Ok(endpoint),
    }
}

/// As [`client_endpoint`], for a node that dials the leader with the certificate it serves.
///
/// # Errors
/// As for [`client_endpoint`].
pub fn endpoint(addr: SocketAddr, tls: Option<&ServerTls>) -> Result<Endpoint, TlsError> {
    client_endpoint(addr, tls.map(ServerTls::trust).as_ref())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_generated_certificate_reads_back_from_its_file_text() {
        let made = ServerTls::generate().unwrap();
        let back = ServerTls::from_pem(&made.to_pem()).unwrap();
        assert_eq!(back.to_pem(), made.to_pem());
        assert!(ServerTls::from_pem(&made.cert_pem).is_err());
        assert!(ServerTls::from_pem(&made.key_pem).is_err());
    }

    #[test]
    fn a_client_keeps_the_certificate_and_never_the_key() {
        let made = ServerTls::generate().unwrap();
        let trusted = ClientTls::from_pem(&made.to_pem()).unwrap();
        assert_eq!(trusted, made.trust());
        assert_eq!(trusted.cert_pem, made.cert_pem);
        assert!(!trusted.cert_pem.contains("PRIVATE KEY"));
        // The certificate alone will do; a key alone, or a certificate after the key, will not.
        assert_eq!(ClientTls::from_pem(&made.cert_pem).unwrap(), trusted);
        assert!(matches!(
            ClientTls::from_pem(&made.key_pem),
            Err(TlsError::NoCertificate)
        ));
        let key_first = format!("{}{}", made.key_pem, made.cert_pem);
        assert!(matches!(
            ClientTls::from_pem(&key_first),
            Err(TlsError::NoCertificate)
        ));
        // A block cut short is not a certificate.
        let cut: String = made.cert_pem.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(matches!(
            ClientTls::from_pem(&cut),
            Err(TlsError::NoCertificate)
        ));
    }

    #[test]
    fn a_client_loads_the_certificate_file_only_when_others_cannot_change_it() {
        let dir = std::env::temp_dir().join(format!("auction-tls-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(PEM_FILE);
        assert!(matches!(
            ClientTls::load(&path),
            Err(TlsError::Missing { .. })
        ));
        let made = ServerTls::generate().unwrap();
        fs::write(&path, made.to_pem()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ClientTls::load(&path).unwrap(), made.trust());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o622)).unwrap();
        assert!(matches!(
            ClientTls::load(&path),
            Err(TlsError::Writable { mode: 0o622, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn endpoints_dial_http_or_https() {
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let plain = client_endpoint(addr, None).unwrap();
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        let made = ServerTls::generate().unwrap();
        let tls = client_endpoint(addr, Some(&made.trust())).unwrap();
        assert_eq!(tls.uri().scheme_str(), Some("https"));
    }
}
