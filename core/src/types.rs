//! Newtypes for the values that cross the system's edges, each validated where it is built, so
//! that code holding one never checks it again.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Input that the system refuses before it changes anything.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InputError {
    #[error("amount must be a whole number, got {0:?}")]
    AmountNotInteger(String),
    #[error("amount must be positive, got {0}")]
    AmountNotPositive(String),
    #[error("amount is too large: at most {max}", max = Amount::MAX)]
    AmountTooLarge,
    #[error("bidder name must be 1 to {max} characters, got {0}", max = BidderId::MAX_LEN)]
    BidderLength(usize),
    #[error("bidder name may use only letters, digits, '-', '_' and '.', got {0:?}")]
    BidderCharacters(String),
    #[error("duration must be between 1 second and {max} seconds", max = AuctionLength::MAX_SECS)]
    Duration,
    #[error("request id must have a non-zero session and sequence number")]
    RequestId,
    #[error(
        "token must be {min} to {max} characters from letters, digits, '-' and '_'",
        min = Token::MIN_LEN,
        max = Token::MAX_LEN
    )]
    Token,
}

/// A bid amount: a whole number from 1 to [`Amount::MAX`].
///
/// The upper bound is 2^53 - 1, the largest integer every JSON reader represents exactly, so an
/// amount survives every client's parser unchanged and no sum or comparison can overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u64);

impl Amount {
    /// The largest amount accepted.
    pub const MAX: u64 = (1 << 53) - 1;

    /// # Errors
    /// [`InputError::AmountNotPositive`] for 0, [`InputError::AmountTooLarge`] above [`Self::MAX`].
    pub fn new(value: u64) -> Result<Self, InputError> {
        match value {
            0 => Err(InputError::AmountNotPositive("0".into())),
            v if v > Self::MAX => Err(InputError::AmountTooLarge),
            v => Ok(Self(v)),
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for Amount {
    type Err = InputError;

    /// Parses what a person types: surrounding blanks are ignored, a leading `+` is allowed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let digits = t.strip_prefix('+').unwrap_or(t);
        if let Some(rest) = digits.strip_prefix('-')
            && !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(InputError::AmountNotPositive(t.to_string()));
        }
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InputError::AmountNotInteger(t.to_string()));
        }
        let value: u64 = digits.parse().map_err(|_| InputError::AmountTooLarge)?;
        Self::new(value)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A bidder's name: 1 to 64 characters from `[A-Za-z0-9_.-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BidderId(String);

impl BidderId {
    pub const MAX_LEN: usize = 64;

    /// # Errors
    /// [`InputError::BidderLength`] or [`InputError::BidderCharacters`].
    pub fn new(name: impl Into<String>) -> Result<Self, InputError> {
        let name = name.into();
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(InputError::BidderLength(name.chars().count()));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(InputError::BidderCharacters(name));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, without a copy.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for BidderId {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for BidderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A point on the replicated auction clock, in milliseconds since the cluster was founded.
///
/// The clock is replicated state: only the leader advances it, by the time that elapsed on its
/// monotonic clock (docs/design.md, "Time"), so a step of the host's wall clock (NTP, `date -s`, a
/// restored VM) moves no deadline and expires no session. Deadlines and session ages are points
/// on this clock; the wall clock serves only to display them (`auction::host::wall_clock_ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub fn saturating_add(self, d: AuctionLength) -> Self {
        Self(self.0.saturating_add(d.as_millis()))
    }

    /// This point plus `elapsed` (saturating; sub-millisecond parts are dropped).
    pub fn after(self, elapsed: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

/// The length of an auction, from 1 second to 10 years, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuctionLength(u64);

impl AuctionLength {
    pub const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

    /// # Errors
    /// [`InputError::Duration`] outside 1 s ..= [`Self::MAX_SECS`].
    pub fn from_millis(ms: u64) -> Result<Self, InputError> {
        if (1000..=Self::MAX_SECS * 1000).contains(&ms) {
            Ok(Self(ms))
        } else {
            Err(InputError::Duration)
        }
    }

    /// # Errors
    /// [`InputError::Duration`] outside 1 ..= [`Self::MAX_SECS`].
    pub fn from_secs(secs: u64) -> Result<Self, InputError> {
        Self::from_millis(secs.checked_mul(1000).ok_or(InputError::Duration)?)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }
}

/// Identifies a client request across retries. A session is one client process; `seq` grows by
/// one per request, so a retry carries the same id and gets the first outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId {
    pub session: u64,
    pub seq: u64,
}

impl RequestId {
    /// # Errors
    /// [`InputError::RequestId`] when either part is zero.
    pub fn new(session: u64, seq: u64) -> Result<Self, InputError> {
        if session == 0 || seq == 0 {
            return Err(InputError::RequestId);
        }
        Ok(Self { session, seq })
    }
}

/// A secret a client presents: a bidder's token, or the operator token. Long enough to be
/// unguessable; never logged (its `Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub const MIN_LEN: usize = 32;
    pub const MAX_LEN: usize = 128;

    /// # Errors
    /// [`InputError::Token`] when the length or a character is out of range.
    pub fn new(token: impl Into<String>) -> Result<Self, InputError> {
        let token = token.into();
        let ok = (Self::MIN_LEN..=Self::MAX_LEN).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if ok {
            Ok(Self(token))
        } else {
            Err(InputError::Token)
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the cluster keeps instead of the token.
    pub fn credential(&self) -> Credential {
        use sha2::Digest;
        Credential(sha2::Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl FromStr for Token {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s.trim())
    }
}

/// The SHA-256 of a bidder's token: the replicated state keeps this, never the token, and a bid
/// in a bidder's name counts only with the token whose credential the name was registered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Credential(pub [u8; 32]);

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A node's id: the `--id` it was started with (`--port` in the original hand-in).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u16);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_like_a_person_types_them() {
        assert_eq!("42".parse::<Amount>().unwrap().get(), 42);
        assert_eq!(" +7 ".parse::<Amount>().unwrap().get(), 7);
        assert!(matches!(
            "0".parse::<Amount>(),
            Err(InputError::AmountNotPositive(_))
        ));
        assert!(matches!(
            "-5".parse::<Amount>(),
            Err(InputError::AmountNotPositive(_))
        ));
        for bad in ["", "1.5", "abc", "1e3", "--1", "- 1", "0x10"] {
            assert!(
                matches!(bad.parse::<Amount>(), Err(InputError::AmountNotInteger(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            "99999999999999999999999".parse::<Amount>(),
            Err(InputError::AmountTooLarge)
        );
        assert_eq!(
            Amount::MAX.to_string().parse::<Amount>().unwrap().get(),
            Amount::MAX
        );
        assert_eq!(
            (Amount::MAX + 1).to_string().parse::<Amount>(),
            Err(InputError::AmountTooLarge)
        );
    }

    #[test]
    fn bidder_names_are_short_and_plain() {
        assert!(BidderId::new("alice-1.b_c").is_ok());
        assert!(matches!(
            BidderId::new(""),
            Err(InputError::BidderLength(0))
        ));
        assert!(BidderId::new("x".repeat(65)).is_err());
        assert!(BidderId::new("x".repeat(64)).is_ok());
        assert!(matches!(
            BidderId::new("a b"),
            Err(InputError::BidderCharacters(_))
        ));
        assert!(BidderId::new("ålice").is_err());
    }

    #[test]
    fn durations_and_request_ids_are_bounded() {
        assert!(AuctionLength::from_secs(0).is_err());
        assert!(AuctionLength::from_secs(u64::MAX).is_err());
        assert_eq!(AuctionLength::from_secs(2).unwrap().as_millis(), 2000);
        assert!(RequestId::new(0, 1).is_err());
        assert!(RequestId::new(1, 0).is_err());
    }
}
