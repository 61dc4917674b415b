//! How a node or a client reaches etcd: its endpoints, TLS to them, and the user it signs in as.
//! Secrets never come from the command line: a user's password is read from
//! `$AUCTION_ETCD_PASSWORD` ([`PASSWORD_ENV`]), and a client key from a file.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::registry::REQUEST_TIMEOUT;

/// The environment variable that holds the password of `--etcd-user`.
pub const PASSWORD_ENV: &str = "AUCTION_ETCD_PASSWORD";

/// The options that point a node or a client at etcd (flattened into their command lines).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EtcdArgs {
    /// Multi-host mode: the etcd client URLs, comma-separated (http://HOST:2379,... or
    /// https://HOST:2379,... with --etcd-ca). etcd decides who leads and who is a member; a
    /// client finds the nodes there instead of --server.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Multi-host mode: the key prefix of this cluster in etcd, so several clusters share one.
    #[arg(long, default_value = "auction", requires = "etcd")]
    pub cluster: String,
    /// The etcd user to sign in as, when etcd has auth enabled; its password is read from
    /// $AUCTION_ETCD_PASSWORD.
    #[arg(long, requires = "etcd")]
    pub etcd_user: Option<String>,
    /// TLS to etcd: the CA certificate (PEM) that signed etcd's server certificates.
    #[arg(long, requires = "etcd")]
    pub etcd_ca: Option<PathBuf>,
    /// TLS to etcd with a client certificate (PEM), for an etcd started with
    /// --client-cert-auth; needs --etcd-key and --etcd-ca.
    #[arg(long, requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// How to reach etcd, or `None` without `--etcd` (single-host mode). Reads the password from
    /// `$AUCTION_ETCD_PASSWORD` and the TLS files.
    ///
    /// # Errors
    /// [`AccessError`]: `--etcd-user` without a password in the environment, an unreadable TLS
    /// file, or an `https://` endpoint without `--etcd-ca`.
    pub fn access(&self) -> Result<Option<EtcdAccess>, AccessError> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        let credentials = match &self.etcd_user {
            None => None,
            Some(user) => Some(Credentials {
                user: user.clone(),
                password: std::env::var(PASSWORD_ENV)
                    .map_err(|_| AccessError::NoPassword { user: user.clone() })?,
            }),
        };
        let tls = match &self.etcd_ca {
            None => None,
            Some(ca) => Some(EtcdTls {
                ca_pem: read(ca)?,
                identity: match (&self.etcd_cert, &self.etcd_key) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                },
            }),
        };
        let access = EtcdAccess {
            endpoints: self.etcd.clone(),
            credentials,
            tls,
        };
        access.check()?;
        Ok(Some(access))
    }
}

fn read(path: &Path) -> Result<String, AccessError> {
    std::fs::read_to_string(path).map_err(|source| AccessError::File {
        path: path.to_owned(),
        source,
    })
}

/// Why etcd's options cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("--etcd-user {user} needs its password in ${PASSWORD_ENV}")]
    NoPassword { user: String },
    #[error("cannot read {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("etcd endpoint {endpoint:?} uses https: give --etcd-ca with the CA that signed it")]
    NoCa { endpoint: String },
    #[error("etcd endpoint {endpoint:?} uses http, but --etcd-ca asks for TLS: use https://")]
    PlainWithTls { endpoint: String },
    #[error("bad etcd endpoint {endpoint:?}: {why}")]
    Endpoint { endpoint: String, why: String },
}

/// A user and password for etcd's auth. Its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, ..)", self.user)
    }
}

/// TLS to etcd: the CA that signed its server certificates, and a client certificate and key.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: String,
    /// Certificate, then key, both PEM.
    pub identity: Option<(String, String)>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EtcdTls(client certificate: {})",
            self.identity.is_some()
        )
    }
}

/// Everything needed to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdAccess {
    /// Client URLs, `http://` or (with [`Self::tls`]) `https://`.
    pub endpoints: Vec<String>,
    /// Signs in as this user when given (etcd with auth enabled).
    pub credentials: Option<Credentials>,
    pub tls: Option<EtcdTls>,
}

impl EtcdAccess {
    /// Plain HTTP to `endpoints`, without a user.
    pub fn plain(endpoints: &[String]) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            credentials: None,
            tls: None,
        }
    }

    /// Every endpoint's scheme matches the TLS options.
    fn check(&self) -> Result<(), AccessError> {
        for endpoint in &self.endpoints {
            let https = endpoint.starts_with("https://");
            match (&self.tls, https) {
                (None, true) => {
                    return Err(AccessError::NoCa {
                        endpoint: endpoint.clone(),
                    });
                }
                (Some(_), false) => {
                    return Err(AccessError::PlainWithTls {
                        endpoint: endpoint.clone(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A channel that balances over the endpoints, each request within [`REQUEST_TIMEOUT`],
    /// dialing from `local` if given. Connects lazily; must be called inside a Tokio runtime.
    ///
    /// # Errors
    /// [`AccessError::Endpoint`] for an endpoint that is not a URL or a TLS set-up tonic
    /// refuses; [`AccessError::NoCa`] / [`AccessError::PlainWithTls`] for a scheme that does not
    /// match the TLS options.
    pub fn channel(&self, local: Option<IpAddr>) -> Result<Channel, AccessError> {
        self.check()?;
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| {
                let bad = |why: String| AccessError::Endpoint {
                    endpoint: e.clone(),
                    why,
                };
                let mut endpoint = Endpoint::from_shared(e.clone())
                    .map_err(|why| bad(why.to_string()))?
                    .connect_timeout(REQUEST_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .local_address(local);
                if let Some(tls) = &self.tls {
                    let mut config =
                        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
                    if let Some((cert, key)) = &tls.identity {
                        config = config.identity(Identity::from_pem(cert, key));
                    }
                    endpoint = endpoint
                        .tls_config(config)
                        .map_err(|why| bad(why.to_string()))?;
                }
                Ok(endpoint)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Channel::balance_list(endpoints.into_iter()))
    }
}

/// The auth token etcd gave for [`Credentials`], sent as `token` metadata with every request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Token(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl Token {
    pub(crate) fn set(&self, token: MetadataValue<Ascii>) {
        // Invariant: no code panics while holding this lock, so it is never poisoned.
        *self.0.write().expect("token lock poisoned") = Some(token);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.read().expect("token lock poisoned").is_some()
    }
}

impl tonic::service::Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0.read().expect("token lock poisoned").clone() {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let c = Credentials {
            user: "ann".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn schemes_must_match_the_tls_options() {
        let mut access = EtcdAccess::plain(&["https://127.0.0.1:2379".to_string()]);
        assert!(matches!(access.check(), Err(AccessError::NoCa { .. })));
        access.endpoints = vec!["http://127.0.0.1:2379".to_string()];
        assert!(access.check().is_ok());
        access.tls = Some(EtcdTls {
            ca_pem: String::new(),
            identity: None,
        });
        assert!(matches!(
            access.check(),
            Err(AccessError::PlainWithTls { .. })
        ));
    }
}
