//! The pause between the attempts of something that failed: doubling from a first pause up to a
//! longest one, optionally with jitter so that many clients cut off by one failure do not retry
//! in lockstep. The one backoff of the client, the node and the benchmarks.

use std::time::Duration;

/// Doubling pauses from `first` up to `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The pause after a success ([`Backoff::reset`]).
    first: Duration,
    /// The longest pause.
    max: Duration,
    /// The next pause, before jitter.
    next: Duration,
    /// Spreads each pause over [½, 1½] of its nominal length when set; changes per pause.
    jitter: Option<u64>,
}

impl Backoff {
    /// Pauses of `first`, then twice as long each time, up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
            jitter: None,
        }
    }

    /// The same pauses, each spread over [½, 1½] of its nominal length by a sequence that
    /// `seed` (a session id, say) chooses.
    #[must_use]
    pub const fn with_jitter(mut self, seed: u64) -> Self {
        self.jitter = Some(seed);
        self
    }

    /// The next pause's nominal length (at most 1½ times that with jitter).
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The next pause; the one after is twice as long, up to the longest.
    pub fn next_pause(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        match &mut self.jitter {
            None => nominal,
            Some(seed) => {
                *seed = seed.wrapping_add(1);
                jitter(nominal, *seed)
            }
        }
    }

    /// Sleeps for the next pause.
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }

    /// Starts again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// `d` spread over [½, 1½] of itself by `seed`.
fn jitter(d: Duration, seed: u64) -> Duration {
    let spread = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as u32; // 0..1024
    d / 2 + d * spread / 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_double_up_to_the_longest_and_reset_to_the_first() {
        let mut b = Backoff::new(MS, 5 * MS);
        let pauses: Vec<_> = (0..5).map(|_| b.next_pause()).collect();
        assert_eq!(pauses, [MS, 2 * MS, 4 * MS, 5 * MS, 5 * MS]);
        b.reset();
        assert_eq!(b.next_pause(), MS);
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half_and_varies() {
        let d = 100 * MS;
        for seed in 0..1000u64 {
            let j = jitter(d, seed);
            assert!(j >= d / 2 && j <= d * 3 / 2, "{j:?}");
        }
        let mut a = Backoff::new(d, d).with_jitter(1);
        let pauses: Vec<_> = (0..8).map(|_| a.next_pause()).collect();
        assert!(pauses.windows(2).any(|w| w[0] != w[1]), "{pauses:?}");
    }
}
