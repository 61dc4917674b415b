//! Busy-polling after light activity: a trade of CPU for latency, on by default.
//!
//! At low load a bid is a chain of process wake-ups (client, leader, replicas, leader, client).
//! Waking a process that sleeps on an idle core costs an inter-processor interrupt, which on a
//! virtual machine costs more than all the work around it. A leader that keeps polling its
//! sockets for a short window after each small batch, instead of sleeping in `epoll_wait`, is
//! awake when the acknowledgements and the client's next request arrive, so nobody has to wake
//! it. Each turn of the poll first yields the core to any other runnable process, so replicas
//! queued behind the leader on its core still run.
//!
//! Under load the leader is never idle for long and batches are large, so it does not spin at
//! all: only a run of [`CALM_BATCHES`] small batches in a row starts a window (see
//! [`Spin::after_batch`]). Even at 64 clients a few batches are small, but they come alone.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Batches of at most this many requests are small; larger ones mean the load keeps the leader
/// busy without help, and spinning would only take CPU from the other processes.
/// (`auction-node --help` and docs/cli.md say 4.)
pub(crate) const SPIN_MAX_BATCH: usize = 4;

/// Small batches in a row that start a spin window: a small batch among large ones is a hiccup
/// of a busy leader, not light load. (`auction-node --help` and docs/cli.md say 4.)
pub(crate) const CALM_BATCHES: u32 = 4;

/// The spin window of `auction-node` unless `--spin-us` says otherwise: long enough to span a
/// replication round and the client's next request on loopback, about 70 µs here.
pub const DEFAULT_SPIN_US: u64 = 100;

/// The longest spin window a node accepts.
pub const MAX_SPIN: Duration = Duration::from_millis(10);

/// The leader's handle on the spinning task of its runtime's thread. The task ends when the
/// handle is dropped.
#[derive(Debug)]
pub(crate) struct Spin {
    /// When the last small batch went out; `None` when spinning is off, and nothing is spawned.
    last_kick: Option<watch::Sender<Instant>>,
    /// Small batches since the last large one.
    calm: u32,
}

impl Spin {
    /// Spawns the spinner on the current runtime, which must be single-threaded (the spinner
    /// keeps that thread polling); a zero `window` turns spinning off.
    pub(crate) fn spawn(window: Duration) -> Self {
        let last_kick = (!window.is_zero()).then(|| {
            let (last_kick, kicks) = watch::channel(Instant::now());
            tokio::spawn(spin(window, kicks));
            last_kick
        });
        Self { last_kick, calm: 0 }
    }

    /// Told after each batch the leader sends, with its number of client requests: each small
    /// batch (at most [`SPIN_MAX_BATCH`] requests) from the [`CALM_BATCHES`]th in a row on
    /// starts or extends a spin window. Batches without client requests (membership changes
    /// only) neither count nor break a run.
    pub(crate) fn after_batch(&mut self, requests: usize) {
        let Some(last_kick) = &self.last_kick else {
            return;
        };
        match requests {
            0 => {}
            1..=SPIN_MAX_BATCH => {
                self.calm = self.calm.saturating_add(1);
                if self.calm >= CALM_BATCHES {
                    last_kick.send_replace(Instant::now());
                }
            }
            _ => self.calm = 0,
        }
    }
}

/// Polls for `window` after each kick; ends when the [`Spin`] is dropped.
async fn spin(window: Duration, mut kicks: watch::Receiver<Instant>) {
    while kicks.changed().await.is_ok() {
        // `has_changed` fails once the handle is gone, which ends a window early too.
        while kicks.has_changed().is_ok() && kicks.borrow_and_update().elapsed() < window {
            // Lets any other process runnable on this core go first...
            std::thread::yield_now();
            // ...then lets the runtime poll its sockets without blocking (a task that yields
            // is woken only after the runtime has polled for I/O) and run what became ready.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn off_spawns_nothing_and_ignores_batches() {
        let mut spin = Spin::spawn(Duration::ZERO);
        assert!(spin.last_kick.is_none());
        for _ in 0..CALM_BATCHES {
            spin.after_batch(1);
        }
        assert_eq!(spin.calm, 0);
    }

    /// Feeds `batches` to a spinner with an hour-long window, and says whether the last one
    /// kicked it.
    async fn kicked_by_last(batches: &[usize]) -> bool {
        let mut spin = Spin::spawn(Duration::from_secs(3600));
        let mut kicks = spin.last_kick.as_ref().expect("spinning is on").subscribe();
        let (last, before) = batches.split_last().expect("some batches");
        for &requests in before {
            spin.after_batch(requests);
        }
        kicks.mark_unchanged();
        spin.after_batch(*last);
        kicks.has_changed().expect("the handle is alive")
    }

    #[tokio::test]
    async fn a_run_of_small_batches_kicks() {
        let run = vec![SPIN_MAX_BATCH; CALM_BATCHES as usize];
        assert!(kicked_by_last(&run).await);
        // Once spinning, each further small batch extends the window.
        assert!(kicked_by_last(&[run.clone(), vec![1]].concat()).await);
        // Membership-only batches do not break a run.
        let mut with_membership = run.clone();
        with_membership.insert(1, 0);
        assert!(kicked_by_last(&with_membership).await);
    }

    #[tokio::test]
    async fn large_or_lone_small_batches_do_not_kick() {
        assert!(!kicked_by_last(&[SPIN_MAX_BATCH + 1]).await);
        let short_run = vec![1; CALM_BATCHES as usize - 1];
        assert!(!kicked_by_last(&short_run).await);
        // A large batch ends a run: the count starts again.
        let mut broken = vec![1; CALM_BATCHES as usize];
        broken.insert(1, SPIN_MAX_BATCH + 1);
        assert!(!kicked_by_last(&broken).await);
        // Nor does a membership-only batch after a run.
        let membership_last = [vec![1; CALM_BATCHES as usize], vec![0]].concat();
        assert!(!kicked_by_last(&membership_last).await);
    }

    /// The spinner ends with its handle, even in the middle of a window.
    #[tokio::test]
    async fn the_spinner_ends_with_its_handle() {
        let (last_kick, kicks) = watch::channel(Instant::now());
        let spinner = tokio::spawn(spin(Duration::from_secs(3600), kicks));
        last_kick.send_replace(Instant::now());
        // Lets the spinner see the kick and start its hour-long window.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        drop(last_kick);
        tokio::time::timeout(Duration::from_secs(5), spinner)
            .await
            .expect("the spinner ended with its handle")
            .unwrap();
    }
}
