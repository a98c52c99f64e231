//! A panic's message comes after the lines logged before it. The lines reach stderr through the
//! writer thread, the standard panic hook writes straight to stderr, and the hook that
//! `start_telemetry` wraps around it flushes the thread first. The test re-runs its own binary
//! as the panicking process and reads that process's stderr.

use std::process::Command;

use basalt_daemon::LogFormat;

/// Set in the child: there the test logs and panics instead of spawning.
const CHILD: &str = "BASALT_DAEMON_TEST_PANIC_CHILD";
const TEST: &str = "a_panic_message_comes_after_the_lines_logged_before_it";
const LINES: usize = 5000;

#[test]
fn a_panic_message_comes_after_the_lines_logged_before_it() {
    if std::env::var_os(CHILD).is_some() {
        panic_after_logging();
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child did not panic: {stderr}");
    let last_line = stderr
        .find(&format!("logged line {}", LINES - 1))
        .unwrap_or_else(|| panic!("the last line is missing: {stderr}"));
    let message = stderr
        .find("the child's panic")
        .unwrap_or_else(|| panic!("the panic message is missing: {stderr}"));
    assert!(
        last_line < message,
        "the panic message came before the lines logged ahead of it"
    );
}

fn panic_after_logging() {
    let _log =
        basalt_daemon::start_telemetry("test", LogFormat::Plain, Some("info")).expect("telemetry");
    // More than a pipe holds (64 KiB), so lines are still queued when the panic comes.
    for i in 0..LINES {
        tracing::info!("logged line {i}");
    }
    panic!("the child's panic");
}
