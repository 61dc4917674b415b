//! The host faults of a fault run: the nodes' shared wall clock, which the nemesis steps by up
//! to a day either way, and the cluster's files in /tmp, which it deletes as a cleaner would.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Config;
use crate::fake_clock::FakeClock;

/// The furthest the nemesis steps the nodes' wall clock from the real one, either way: a day.
pub const MAX_CLOCK_OFFSET_SECS: i64 = 24 * 3600;

/// Where the nodes of a cluster keep files that a cleaner may delete (the cluster lock, before
/// issue #13), and how those files' names begin.
const ARTEFACT_DIR: &str = "/tmp";
const ARTEFACT_PREFIX: &str = "auction-node-";

/// The run's own directory under [`Config::scratch_dir`], removed with it.
pub(super) struct RunDir(PathBuf);

impl RunDir {
    /// Makes the directory.
    ///
    /// # Errors
    /// It cannot be made, or it is in /tmp while each node has a /tmp of its own.
    pub(super) fn create(cfg: &Config) -> Result<Self, String> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(&cfg.scratch_dir)
            .map_err(|e| format!("creating {}: {e}", cfg.scratch_dir.display()))?;
        let base = cfg
            .scratch_dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", cfg.scratch_dir.display()))?;
        if cfg.private_tmp && base.starts_with("/tmp") {
            return Err(format!(
                "{} is in /tmp, which nodes with a private /tmp cannot see: \
                 choose a scratch directory outside /tmp",
                base.display()
            ));
        }
        let dir = base.join(format!(
            "auction-nemesis-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Self(dir))
    }

    /// Where it is.
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The host-level state the nemesis breaks: the nodes' shared wall clock, and the files of the
/// cluster in /tmp.
pub(super) struct Host {
    pub(super) clock: FakeClock,
    /// The wall clock's current offset from the real one, in seconds.
    pub(super) offset: i64,
    /// The cluster's replica port, which names its files.
    pub(super) leader_port: u16,
    /// Steps that could not be made (the offset file could not be written).
    pub(super) errors: Vec<String>,
}

impl Host {
    /// Steps every node's wall clock forward or back, by an amount and of a sort that the
    /// random numbers `step` and `mode` choose (see [`next_offset`]); returns what it did, or
    /// `None` when the clock is as far as it may go that way.
    pub(super) fn step(&mut self, forward: bool, step: u64, mode: u64) -> Option<String> {
        let to = next_offset(self.offset, forward, step, mode)?;
        if let Err(e) = self.clock.set_offset(to) {
            self.errors
                .push(format!("the wall clock could not be stepped: {e}"));
            return None;
        }
        let from = std::mem::replace(&mut self.offset, to);
        Some(format!("wall clock {from:+} s -> {to:+} s"))
    }
}

/// The wall clock offset after a step from `current` (seconds, within
/// ±[`MAX_CLOCK_OFFSET_SECS`]) in the direction `forward`: one time in four back to the real
/// time if that is the way, one in four by at most a minute, else by up to the furthest the
/// clock may go. `None` when it is already that far.
fn next_offset(current: i64, forward: bool, step: u64, mode: u64) -> Option<i64> {
    let room = if forward {
        MAX_CLOCK_OFFSET_SECS - current
    } else {
        current + MAX_CLOCK_OFFSET_SECS
    };
    let room = u64::try_from(room).ok().filter(|r| *r > 0)?;
    let by = match mode % 4 {
        0 if current != 0 && (current < 0) == forward => return Some(0),
        1 => 1 + step % room.min(60),
        _ => 1 + step % room,
    };
    let by = i64::try_from(by).ok()?;
    Some(if forward { current + by } else { current - by })
}

/// Whether `name`, a file in [`ARTEFACT_DIR`], belongs to the cluster whose replica port is
/// `port`: it starts with [`ARTEFACT_PREFIX`] and names the port (as in
/// `auction-node-127.0.0.1-41234.lock`).
fn is_artefact(name: &str, port: u16) -> bool {
    let port = port.to_string();
    name.strip_prefix(ARTEFACT_PREFIX).is_some_and(|rest| {
        rest.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|part| part == port)
    })
}

/// Deletes the files of the cluster on replica port `port` from [`ARTEFACT_DIR`], as a cleaner
/// would; returns how many it deleted. There may be none.
pub(super) fn delete_artefacts(port: u16) -> usize {
    let Ok(dir) = std::fs::read_dir(ARTEFACT_DIR) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| is_artefact(&e.file_name().to_string_lossy(), port))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::Rng;

    #[test]
    fn clock_steps_stay_within_a_day_and_go_the_way_they_are_named() {
        let mut r = Rng::new(3);
        let mut offset = 0;
        for i in 0..10_000u64 {
            let forward = i % 3 != 0;
            match next_offset(offset, forward, r.next_u64(), r.next_u64()) {
                Some(to) => {
                    assert!(to.abs() <= MAX_CLOCK_OFFSET_SECS, "{to}");
                    assert_eq!(to > offset, forward, "{offset} -> {to}");
                    offset = to;
                }
                None => assert_eq!(offset.abs(), MAX_CLOCK_OFFSET_SECS),
            }
        }
        // Back to the real time, when that is the way.
        assert_eq!(next_offset(500, false, 7, 4), Some(0));
        assert_eq!(next_offset(-500, true, 7, 4), Some(0));
        assert_eq!(next_offset(500, true, 7, 4), Some(508));
        // Small steps, at most a minute.
        assert_eq!(next_offset(0, true, 59, 1), Some(60));
        assert_eq!(next_offset(0, false, 60, 1), Some(-1));
        // No room.
        assert_eq!(next_offset(MAX_CLOCK_OFFSET_SECS, true, 1, 2), None);
        assert_eq!(next_offset(-MAX_CLOCK_OFFSET_SECS, false, 1, 2), None);
    }

    #[test]
    fn only_this_clusters_files_are_artefacts() {
        assert!(is_artefact("auction-node-127.0.0.1-41234.lock", 41234));
        assert!(is_artefact("auction-node-41234", 41234));
        assert!(!is_artefact("auction-node-127.0.0.1-41235.lock", 41234));
        assert!(!is_artefact("auction-node-127.0.0.1-412345.lock", 41234));
        assert!(!is_artefact("other-127.0.0.1-41234.lock", 41234));
    }
}
