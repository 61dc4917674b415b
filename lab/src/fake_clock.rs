//! A wall clock that the lab steps: libfaketime preloaded into node processes.

use std::path::PathBuf;

/// Where Debian's libfaketime keeps the library, per architecture.
const LIBFAKETIME_DIRS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/faketime",
    "/usr/lib/aarch64-linux-gnu/faketime",
    "/usr/lib/faketime",
];

/// A wall clock that tests and fault runs step, shared by every process started with its
/// [`FakeClock::env`]: libfaketime (Debian's `faketime` package) is preloaded and reads the
/// offset from one file at every call, while the monotonic clock runs on untouched, as on a host
/// whose wall clock an NTP step or an operator's `date -s` moves.
#[derive(Debug)]
pub struct FakeClock {
    /// The preloaded library.
    library: PathBuf,
    /// The offset file; its content is the offset from the real wall clock, like "-3600" (s).
    file: PathBuf,
}

impl FakeClock {
    /// A clock at offset 0 whose offset file is `file`.
    ///
    /// # Errors
    /// libfaketime is not installed (the message names the package), or the file cannot be
    /// written.
    pub fn new(file: impl Into<PathBuf>) -> std::io::Result<Self> {
        let library = LIBFAKETIME_DIRS
            .iter()
            .map(|d| PathBuf::from(d).join("libfaketime.so.1"))
            .find(|p| p.exists())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "libfaketime.so.1 not found: install Debian's faketime package \
                     (apt-get install faketime)",
                )
            })?;
        let clock = Self {
            library,
            file: file.into(),
        };
        clock.set_offset(0)?;
        Ok(clock)
    }

    /// The environment that puts a process on this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", self.library.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Steps the wall clock of every process on this clock to `secs` seconds away from the real
    /// one (negative: into the past). Written to a new file and renamed over the old one, so no
    /// reader ever sees half an offset.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn set_offset(&self, secs: i64) -> std::io::Result<()> {
        let tmp = self.file.with_extension("next");
        std::fs::write(&tmp, format!("{secs:+}\n"))?;
        std::fs::rename(&tmp, &self.file)
    }
}
