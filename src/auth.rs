//! The secrets and where they live. Nodes prove to each other that they hold the cluster secret
//! (see [`crate::handshake`]); `start` and `close` need the operator token; a bid counts only
//! with its bidder's token (see [`Token`]).
//!
//! Secrets live in one directory, `~/.auction` unless told otherwise, that only its owner may
//! read: `cluster.secret`, `operator.token`, and a client's `bidders/NAME.token`. A missing file
//! is created with a random value, so the nodes and clients one user starts share them, and
//! other users cannot read them. `AUCTION_CLUSTER_SECRET` and `AUCTION_OPERATOR_TOKEN` override
//! the two files.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::tls::ServerTls;
use crate::types::{BidderId, Token};

/// The environment variable that, when set, is the cluster secret.
pub const SECRET_ENV: &str = "AUCTION_CLUSTER_SECRET";

/// The environment variable that, when set, is the operator token.
pub const OPERATOR_ENV: &str = "AUCTION_OPERATOR_TOKEN";

/// Why a secret could not be read or created.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} may be read by other users (mode {mode:o}); run chmod go-rwx on it", path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{} belongs to uid {owner}, not to this user", path.display())]
    NotOwned { path: PathBuf, owner: u32 },
    #[error("{}: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("${0}: {1}")]
    InvalidEnv(&'static str, String),
    #[error("no operator token: {} does not exist (a node creates it when it starts) and ${OPERATOR_ENV} is not set", path.display())]
    NoOperatorToken { path: PathBuf },
    #[error("no home directory to keep secrets in: set --auth-dir or AUCTION_AUTH_DIR")]
    NoHome,
}

/// The directory that holds this user's secrets.
#[derive(Clone, Debug)]
pub struct AuthDir {
    path: PathBuf,
}

impl AuthDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `~/.auction`.
    ///
    /// # Errors
    /// [`AuthError::NoHome`] when `HOME` is not set.
    pub fn default_path() -> Result<PathBuf, AuthError> {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| Path::new(&h).join(".auction"))
            .ok_or(AuthError::NoHome)
    }

    /// The cluster secret: `$AUCTION_CLUSTER_SECRET` if set, else `cluster.secret`.
    ///
    /// # Errors
    /// The variable or the file holds no valid secret, or the file cannot be created, or other
    /// users may read it.
    pub fn cluster_secret(&self) -> Result<ClusterSecret, AuthError> {
        match from_env(SECRET_ENV)? {
            Some(secret) => Ok(ClusterSecret(secret)),
            None => self
                .load_or_create(Path::new("cluster.secret"))
                .map(ClusterSecret),
        }
    }

    /// The token that `start` and `close` need, as a node knows it: `$AUCTION_OPERATOR_TOKEN`
    /// if set, else `operator.token`, created if missing.
    ///
    /// # Errors
    /// As for [`Self::cluster_secret`].
    pub fn operator_token(&self) -> Result<Token, AuthError> {
        match from_env(OPERATOR_ENV)? {
            Some(token) => Ok(token),
            None => self.load_or_create(Path::new("operator.token")),
        }
    }

    /// The operator token as a client finds it: like [`Self::operator_token`], but never
    /// created, since a token no node knows would only be refused.
    ///
    /// # Errors
    /// [`AuthError::NoOperatorToken`] when there is none, or as for [`Self::cluster_secret`].
    pub fn existing_operator_token(&self) -> Result<Token, AuthError> {
        if std::env::var_os(OPERATOR_ENV).is_none() {
            let path = self.path.join("operator.token");
            if !path.exists() {
                return Err(AuthError::NoOperatorToken { path });
            }
        }
        self.operator_token()
    }

    /// The token of `bidder`, created at its first use on this machine.
    ///
    /// # Errors
    /// As for [`Self::cluster_secret`].
    pub fn bidder_token(&self, bidder: &BidderId) -> Result<Token, AuthError> {
        // Bidder names never contain '/', so this stays inside `bidders/`.
        self.load_or_create(&Path::new("bidders").join(format!("{bidder}.token")))
    }

    /// Reads the token at `relative`, or creates it with a random one.
    fn load_or_create(&self, relative: &Path) -> Result<Token, AuthError> {
        let text = self.load_or_create_text(relative, || {
            crate::host::random_token().map(|t| format!("{}\n", t.expose()))
        })?;
        Token::new(text.trim()).map_err(|e| AuthError::Invalid {
            path: self.path.join(relative),
            why: e.to_string(),
        })
    }

    /// The TLS certificate and key that nodes serve (`tls.pem`), created at first use: a
    /// self-signed certificate for `localhost` and 127.0.0.1.
    ///
    /// # Errors
    /// As for [`Self::cluster_secret`], or the file holds no certificate and key.
    pub fn tls(&self) -> Result<ServerTls, AuthError> {
        let relative = Path::new("tls.pem");
        let text = self.load_or_create_text(relative, || {
            ServerTls::generate()
                .map(|t| t.to_pem())
                .map_err(io::Error::other)
        })?;
        ServerTls::from_pem(&text).map_err(|e| AuthError::Invalid {
            path: self.path.join(relative),
            why: e.to_string(),
        })
    }

    /// Reads the private file at `relative`, or creates it with what `make` returns. Creation
    /// is atomic (the complete file is linked into place), so processes that start together
    /// agree on it.
    fn load_or_create_text(
        &self,
        relative: &Path,
        make: impl FnOnce() -> io::Result<String>,
    ) -> Result<String, AuthError> {
        static TEMPORARIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.path.join(relative);
        let dir = path.parent().unwrap_or(&self.path).to_path_buf();
        for d in [&self.path, &dir] {
            private_dir(d)?;
        }
        let io = |source| AuthError::Io {
            path: path.clone(),
            source,
        };
        if !path.exists() {
            let text = make().map_err(io)?;
            let n = TEMPORARIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = dir.join(format!(".{}-{n}.tmp", std::process::id()));
            let written = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| {
                    f.write_all(text.as_bytes())?;
                    f.sync_all()
                });
            let linked = written.and_then(|()| fs::hard_link(&tmp, &path));
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => return Ok(text),
                // Another process created it first: read theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        private(&path, 0o077)?;
        fs::read_to_string(&path).map_err(io)
    }
}

/// The token in environment variable `name`, if it is set.
fn from_env(name: &'static str) -> Result<Option<Token>, AuthError> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    let value = value
        .into_string()
        .map_err(|_| AuthError::InvalidEnv(name, "not UTF-8".into()))?;
    Token::new(value.trim())
        .map(Some)
        .map_err(|e| AuthError::InvalidEnv(name, e.to_string()))
}

/// Creates `dir` (mode 0700) if missing, and checks that it is this user's and private.
fn private_dir(dir: &Path) -> Result<(), AuthError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => private(dir, 0o077),
        Err(source) => Err(AuthError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Checks that `path` belongs to this user and has none of the `forbidden` mode bits.
fn private(path: &Path, forbidden: u32) -> Result<(), AuthError> {
    let meta = fs::metadata(path).map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let me = rustix::process::getuid().as_raw();
    if meta.uid() != me {
        return Err(AuthError::NotOwned {
            path: path.to_path_buf(),
            owner: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o777;
    if mode & forbidden != 0 {
        return Err(AuthError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The secret every node of a cluster holds. Never sent: nodes prove they hold it (see
/// [`crate::handshake`]).
#[derive(Clone, Debug)]
pub struct ClusterSecret(Token);

impl ClusterSecret {
    /// The cluster secret `secret`.
    pub fn new(secret: Token) -> Self {
        Self(secret)
    }

    /// The secret itself: the key of the handshake's proofs, and what a child process gets
    /// through [`SECRET_ENV`].
    pub fn token(&self) -> &Token {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_once_privately_and_read_back() {
        let dir = std::env::temp_dir().join(format!("auction-auth-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let auth = AuthDir::new(&dir);
        let first = auth.operator_token().unwrap();
        assert_eq!(auth.operator_token().unwrap(), first);
        let alice = BidderId::new("alice").unwrap();
        let token = auth.bidder_token(&alice).unwrap();
        assert_ne!(token, first);
        assert_eq!(auth.bidder_token(&alice).unwrap(), token);
        let mode = fs::metadata(dir.join("operator.token")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A file others may read is refused, not used.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            dir.join("operator.token"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(
            auth.operator_token(),
            Err(AuthError::Exposed { mode: 0o644, .. })
        ));
        fs::write(dir.join("cluster.secret"), "short\n").unwrap();
        fs::set_permissions(
            dir.join("cluster.secret"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            auth.load_or_create(Path::new("cluster.secret")),
            Err(AuthError::Invalid { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
