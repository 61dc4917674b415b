//! The core stays pure: no async runtime, no gRPC, no I/O crate among its dependencies, and a
//! clippy configuration that forbids reading the clock. (Cargo keeps out what is not listed; this
//! keeps the list short.)

/// The only crates the core may depend on: hashing for credentials, error derives, and the
/// logging facade (which does no I/O itself).
const ALLOWED: [&str; 3] = ["sha2", "thiserror", "tracing"];

fn manifest_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_core_depends_on_no_runtime_transport_or_io_crate() {
    let manifest = manifest_file("Cargo.toml");
    let mut section = "";
    let mut dependencies = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[dependencies]"
            && let Some((name, _)) = line.split_once('=')
        {
            dependencies.push(name.trim().to_string());
        }
    }
    assert!(
        !dependencies.is_empty(),
        "no [dependencies] found:\n{manifest}"
    );
    for dep in &dependencies {
        assert!(
            ALLOWED.contains(&dep.as_str()),
            "auction-core must stay pure, but depends on {dep}"
        );
    }
    assert!(
        !manifest.contains("[target."),
        "no platform-specific dependencies either"
    );
}

#[test]
fn clippy_forbids_the_core_to_read_the_clock() {
    let clippy = manifest_file("clippy.toml");
    for method in ["std::time::Instant::now", "std::time::SystemTime::now"] {
        assert!(
            clippy.contains(method),
            "core/clippy.toml must forbid {method}"
        );
    }
}
