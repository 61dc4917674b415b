//! Busy-polling after light activity, an opt-in trade of CPU for latency.
//!
//! At low load a bid is a chain of process wake-ups (client, leader, replicas, leader, client).
//! Waking a process that sleeps on an idle core costs an inter-processor interrupt, which on a
//! virtual machine costs more than all the work around it. A leader that keeps polling its
//! sockets for a short window after each small batch, instead of sleeping in `epoll_wait`, is
//! awake when the acknowledgements and the client's next request arrive, so nobody has to wake
//! it. Each turn of the poll first yields the core to any other runnable process, so replicas
//! queued behind the leader on its core still run.
//!
//! Under heavy load the leader is never idle for long and batches are large, so it does not
//! spin at all: see [`Spin::after_batch`].

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Batches of at most this many requests start a spin window; larger ones mean the load keeps
/// the leader busy without help, and spinning would only take CPU from the other processes.
/// (`auction-node --help` and README.md say 4.)
pub const SPIN_MAX_BATCH: usize = 4;

/// The longest spin window a node accepts.
pub const MAX_SPIN: Duration = Duration::from_millis(10);

/// The leader's handle on the spinning task of its runtime's thread. The task ends when the
/// handle is dropped.
#[derive(Debug)]
pub struct Spin {
    /// When the last small batch went out; `None` when spinning is off, and nothing is spawned.
    last_kick: Option<watch::Sender<Instant>>,
}

impl Spin {
    /// Spawns the spinner on the current runtime, which must be single-threaded (the spinner
    /// keeps that thread polling); a zero `window` turns spinning off.
    pub fn spawn(window: Duration) -> Self {
        if window.is_zero() {
            return Self { last_kick: None };
        }
        let (last_kick, kicks) = watch::channel(Instant::now());
        tokio::spawn(spin(window, kicks));
        Self {
            last_kick: Some(last_kick),
        }
    }

    /// Told after each batch the leader sends, with its number of client requests: a small
    /// batch (at most [`SPIN_MAX_BATCH`]) starts or extends a spin window.
    pub fn after_batch(&self, requests: usize) {
        if let Some(last_kick) = &self.last_kick
            && (1..=SPIN_MAX_BATCH).contains(&requests)
        {
            last_kick.send_replace(Instant::now());
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
        let spin = Spin::spawn(Duration::ZERO);
        assert!(spin.last_kick.is_none());
        spin.after_batch(1);
    }

    #[tokio::test]
    async fn only_small_batches_kick() {
        let spin = Spin::spawn(Duration::from_secs(3600));
        let kicks = spin.last_kick.as_ref().expect("spinning is on").subscribe();
        spin.after_batch(SPIN_MAX_BATCH + 1);
        spin.after_batch(0);
        assert!(!kicks.has_changed().unwrap());
        spin.after_batch(SPIN_MAX_BATCH);
        assert!(kicks.has_changed().unwrap());
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
