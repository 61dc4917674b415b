//! What a node reads from its host beyond the network: the OS's randomness, and the wall clock,
//! which only displays times (the pure core in `auction-core` may read neither).

use crate::types::{Token, hex};

/// The host's wall clock in milliseconds since the Unix epoch: for display only (a deadline
/// shown as a date), never for a decision, since it may step back or forward at any moment.
pub fn wall_clock_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Fills `buf` from the OS's random source.
///
/// # Errors
/// The OS cannot provide randomness.
pub(crate) fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A new random token: 32 bytes from the OS, in hex (64 characters).
///
/// # Errors
/// The OS has no randomness to give.
pub fn random_token() -> std::io::Result<Token> {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes)?;
    // Invariant: 64 lowercase hex digits are a valid token (32..=128 alphanumerics).
    Ok(Token::new(hex(&bytes)).expect("64 hex digits make a valid token"))
}
