//! Finding the binaries under test: `machined`, `apid`, `trustd` and `basaltctl` in the same
//! `target/<profile>/` directory as the running test executable.
//!
//! A Cargo dependency only links a package's library; Cargo never builds a *dependency's*
//! binaries (that needs the unstable artifact dependencies). `cargo test --workspace` (`make
//! test`) builds them anyway, because the apid, machined and basaltctl packages have integration
//! tests of their own, and Cargo builds a package's binaries for its integration tests. When the
//! e2e tests are run alone (`cargo test -p basalt-e2e`) and a binary is missing, the harness
//! builds it once with the `cargo` that runs the tests, into the same target directory.
//!
//! A binary that exists is used as it is, even if its sources changed since: `make e2e` builds
//! the three binaries first, so that path never tests a stale daemon.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A binary the scenarios run, with the package that builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// `machined` (package `machined`).
    Machined,
    /// `apid` (package `apid`).
    Apid,
    /// `basaltctl` (package `basaltctl`).
    Basaltctl,
    /// `trustd` (package `trustd`), which machined runs on control-plane nodes.
    Trustd,
}

impl Binary {
    const ALL: [Binary; 4] = [
        Binary::Machined,
        Binary::Apid,
        Binary::Basaltctl,
        Binary::Trustd,
    ];

    /// The executable's file name (also its package name).
    pub fn name(self) -> &'static str {
        match self {
            Binary::Machined => "machined",
            Binary::Apid => "apid",
            Binary::Basaltctl => "basaltctl",
            Binary::Trustd => "trustd",
        }
    }

    /// The executable's path; builds the missing binaries on first use, panics with what to run
    /// when that fails.
    pub fn path(self) -> PathBuf {
        let dir = ensure_built();
        let path = dir.join(self.name());
        assert!(
            path.is_file(),
            "{} not found at {} even after building it; run `cargo build -p {}`",
            self.name(),
            path.display(),
            self.name()
        );
        path
    }
}

/// `target/<profile>/`, with every [`Binary`] built. Runs at most one `cargo build` per test
/// process.
fn ensure_built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let missing: Vec<Binary> = Binary::ALL
            .into_iter()
            .filter(|bin| !dir.join(bin.name()).is_file())
            .collect();
        if !missing.is_empty() {
            build(&dir, &missing);
        }
        dir
    })
}

/// The directory holding the test executable's profile outputs: the test binary lives in
/// `target/<profile>/deps/`, the package binaries one level up.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running test executable");
    let deps = exe
        .parent()
        .expect("the test executable has a parent directory");
    if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent()
            .expect("target/<profile>/deps has a parent")
            .to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

fn build(profile_dir: &Path, missing: &[Binary]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(&cargo);
    cmd.arg("build").arg("--manifest-path").arg(&manifest);
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        cmd.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    for bin in missing {
        cmd.args(["-p", bin.name(), "--bin", bin.name()]);
    }
    let names: Vec<&str> = missing.iter().map(|bin| bin.name()).collect();
    eprintln!(
        "basalt-e2e: {} missing from {}; building: {cmd:?}",
        names.join(", "),
        profile_dir.display()
    );
    let status = cmd
        .status()
        .unwrap_or_else(|err| panic!("run {cmd:?} to build {names:?}: {err}"));
    assert!(
        status.success(),
        "building {names:?} failed ({status}); run `cargo build -p machined -p apid -p basaltctl -p trustd`"
    );
}
