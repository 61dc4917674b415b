//! Who may do what. Nodes prove to each other that they hold the cluster secret before any state
//! flows: a challenge and a response in each direction, with HMAC-SHA256, so neither side ever
//! sends the secret and a recorded handshake is worth nothing later. `start` and `close` need the
//! operator token; a bid counts only with its bidder's token (see [`Token`]).
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

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::host::fill_random;
use crate::replication::Member;
use crate::tls::ServerTls;
use crate::types::{BidderId, Token};

/// The environment variable that, when set, is the cluster secret.
pub const SECRET_ENV: &str = "AUCTION_CLUSTER_SECRET";

/// The environment variable that, when set, is the operator token.
pub const OPERATOR_ENV: &str = "AUCTION_OPERATOR_TOKEN";

/// Bytes of randomness in each side's handshake challenge.
pub const NONCE_LEN: usize = 32;

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
    #[error("no TLS certificate: {} does not exist (a node started with --tls creates it)", path.display())]
    NoTls { path: PathBuf },
    #[error("no home directory to keep secrets in: set --auth-dir or AUCTION_AUTH_DIR")]
    NoHome,
}

/// A fresh handshake challenge.
///
/// # Errors
/// The OS cannot provide randomness.
pub fn nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    fill_random(&mut n)?;
    Ok(n)
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
        ServerTls::from_pem(&text).map_err(|why| AuthError::Invalid {
            path: self.path.join(relative),
            why,
        })
    }

    /// The certificate a client trusts: the nodes' `tls.pem`, which must exist.
    ///
    /// # Errors
    /// [`AuthError::NoTls`] when there is none, or as for [`Self::tls`].
    pub fn existing_tls(&self) -> Result<ServerTls, AuthError> {
        let path = self.path.join("tls.pem");
        if !path.exists() {
            return Err(AuthError::NoTls { path });
        }
        self.tls()
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

/// The secret every node of a cluster holds. Never sent: nodes prove they hold it.
#[derive(Clone, Debug)]
pub struct ClusterSecret(Token);

impl ClusterSecret {
    pub fn new(secret: Token) -> Self {
        Self(secret)
    }

    /// The secret itself, to hand to a child process through [`SECRET_ENV`].
    pub fn token(&self) -> &Token {
        &self.0
    }

    /// The leader's answer to a joining replica's challenge. It names the leader, so a proof
    /// cannot be passed off for another process.
    pub fn leader_proof(
        &self,
        replica_nonce: &[u8],
        leader_nonce: &[u8],
        leader: &Member,
    ) -> Vec<u8> {
        self.mac(b"auction/v1 leader", replica_nonce, leader_nonce, leader)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// The replica's answer to the leader's challenge.
    pub fn replica_proof(
        &self,
        leader_nonce: &[u8],
        replica_nonce: &[u8],
        replica: &Member,
    ) -> Vec<u8> {
        self.mac(b"auction/v1 replica", leader_nonce, replica_nonce, replica)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Whether `proof` is [`Self::leader_proof`] of these values (in constant time).
    pub fn verify_leader(
        &self,
        replica_nonce: &[u8],
        leader_nonce: &[u8],
        leader: &Member,
        proof: &[u8],
    ) -> bool {
        self.mac(b"auction/v1 leader", replica_nonce, leader_nonce, leader)
            .verify_slice(proof)
            .is_ok()
    }

    /// Whether `proof` is [`Self::replica_proof`] of these values (in constant time).
    pub fn verify_replica(
        &self,
        leader_nonce: &[u8],
        replica_nonce: &[u8],
        replica: &Member,
        proof: &[u8],
    ) -> bool {
        self.mac(b"auction/v1 replica", leader_nonce, replica_nonce, replica)
            .verify_slice(proof)
            .is_ok()
    }

    /// HMAC over a role label, the verifier's challenge, the prover's challenge and the prover.
    /// Every part has a fixed length or a length prefix, so no two inputs read the same.
    fn mac(&self, label: &[u8], theirs: &[u8], ours: &[u8], who: &Member) -> Hmac<Sha256> {
        // Invariant: HMAC takes keys of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose().as_bytes())
            .expect("HMAC accepts any key length");
        for part in [label, theirs, ours] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&who.id.0.to_be_bytes());
        mac.update(&who.pid.to_be_bytes());
        mac.update(&who.start_time.to_be_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn member(id: u16) -> Member {
        Member {
            id: NodeId(id),
            pid: 4000 + u32::from(id),
            start_time: 99,
        }
    }
    fn secret(c: char) -> ClusterSecret {
        ClusterSecret::new(Token::new(c.to_string().repeat(40)).unwrap())
    }

    #[test]
    fn proofs_verify_only_with_the_same_secret_nonces_and_node() {
        let (s, other) = (secret('a'), secret('b'));
        let (rn, ln) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let proof = s.replica_proof(&ln, &rn, &member(1));
        assert!(s.verify_replica(&ln, &rn, &member(1), &proof));
        assert!(!other.verify_replica(&ln, &rn, &member(1), &proof));
        assert!(!s.verify_replica(&rn, &ln, &member(1), &proof));
        assert!(!s.verify_replica(&ln, &rn, &member(2), &proof));
        assert!(!s.verify_replica(&ln, &rn, &member(1), &proof[1..]));
        // A replica's proof is no leader's proof, even over the same values.
        assert!(!s.verify_leader(&ln, &rn, &member(1), &proof));
        let lp = s.leader_proof(&rn, &ln, &member(9));
        assert!(s.verify_leader(&rn, &ln, &member(9), &lp));
        assert!(!s.verify_leader(&rn, &ln, &member(8), &lp));
    }

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
