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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Batches of at most this many requests start a spin window; larger ones mean the load keeps
/// the leader busy without help, and spinning would only take CPU from the other processes.
pub const SPIN_MAX_BATCH: usize = 4;

/// The longest spin window a node accepts.
pub const MAX_SPIN: Duration = Duration::from_millis(10);

/// A handle on the spinning task of this runtime's thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Spin {
    /// `None` when spinning is off: nothing is spawned and [`Spin::after_batch`] does nothing.
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    /// How long to keep polling after the last small batch.
    window: Duration,
    /// When the spinner started, so the last kick fits in an atomic as nanoseconds since then.
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last kick.
    last_kick: AtomicU64,
    /// Wakes the spinner when it sleeps.
    kick: Notify,
}

impl Spin {
    /// Spinning off.
    pub fn off() -> Self {
        Self { shared: None }
    }

    /// Spawns the spinner on the current runtime, which must be single-threaded (the spinner
    /// keeps that thread polling); a zero `window` turns spinning off.
    pub fn spawn(window: Duration) -> Self {
        if window.is_zero() {
            return Self::off();
        }
        let shared = Arc::new(Shared {
            window,
            epoch: Instant::now(),
            last_kick: AtomicU64::new(0),
            kick: Notify::new(),
        });
        tokio::spawn(spin(shared.clone()));
        Self {
            shared: Some(shared),
        }
    }

    /// Told after each batch the leader sends, with its number of client requests: a small
    /// batch (at most [`SPIN_MAX_BATCH`]) starts or extends a spin window.
    pub fn after_batch(&self, requests: usize) {
        let Some(shared) = &self.shared else {
            return;
        };
        if requests == 0 || requests > SPIN_MAX_BATCH {
            return;
        }
        shared
            .last_kick
            .store(shared.since_epoch(), Ordering::Relaxed);
        shared.kick.notify_one();
    }
}

impl Shared {
    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the last kick is less than a window ago.
    fn in_window(&self) -> bool {
        let window = u64::try_from(self.window.as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_kick.load(Ordering::Relaxed);
        self.since_epoch().saturating_sub(last) < window
    }
}

async fn spin(shared: Arc<Shared>) {
    loop {
        shared.kick.notified().await;
        while shared.in_window() {
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
        assert!(spin.shared.is_none());
        spin.after_batch(1);
    }

    #[tokio::test]
    async fn only_small_batches_open_a_window() {
        let spin = Spin::spawn(Duration::from_secs(3600));
        let shared = spin.shared.clone().expect("spinning is on");
        // Nothing kicked yet, but the window counts from the epoch: move the kick far back.
        shared.last_kick.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let before = shared.last_kick.load(Ordering::Relaxed);
        spin.after_batch(SPIN_MAX_BATCH + 1);
        spin.after_batch(0);
        assert_eq!(shared.last_kick.load(Ordering::Relaxed), before);
        spin.after_batch(1);
        assert!(shared.last_kick.load(Ordering::Relaxed) > before);
        assert!(shared.in_window());
    }

    #[tokio::test]
    async fn a_window_ends() {
        let spin = Spin::spawn(Duration::from_millis(1));
        let shared = spin.shared.clone().expect("spinning is on");
        spin.after_batch(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.in_window() {
            assert!(Instant::now() < deadline, "the window never ended");
            tokio::task::yield_now().await;
        }
    }
}
