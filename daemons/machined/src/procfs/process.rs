//! `/proc/<pid>/…` → `machine.ProcessInfo` for every user-space process (Talos semantics,
//! talos-facts.md §5).

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use basalt_api::machine::ProcessInfo;

use super::{ProcessUnits, is_gone};
use crate::Error;

/// Reads every numeric directory of `root`. A process is skipped when its `exe` link cannot be
/// read (kernel threads have none; processes of other users are unreadable without privilege)
/// or when it exits during the scan. Only failing to list `root` itself is an error.
pub(super) fn scan(root: &Path, units: ProcessUnits) -> Result<Vec<ProcessInfo>, Error> {
    let entries = fs::read_dir(root).map_err(|source| Error::ReadProc {
        path: root.to_owned(),
        source,
    })?;
    let mut processes = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !is_pid(&name) {
            continue;
        }
        let dir = entry.path();
        match read_one(&dir, units) {
            Ok(Some(info)) => processes.push(info),
            Ok(None) => {}
            Err(err) => {
                // A /proc entry with an unexpected shape: report it in the log, keep the rest.
                tracing::debug!(path = %dir.display(), error = %err, "Skipping unreadable process");
            }
        }
    }
    processes.sort_by_key(|p| p.pid);
    Ok(processes)
}

/// The pieces of one process directory that [`process_info`] needs.
#[derive(Debug)]
struct Reading<'a> {
    /// `/proc/<pid>/stat`.
    stat: &'a str,
    /// The target of `/proc/<pid>/exe`.
    executable: &'a str,
    /// `/proc/<pid>/cmdline` (NUL-separated arguments).
    cmdline: &'a [u8],
    /// `/proc/<pid>/attr/current` (the security label), empty when absent.
    label: &'a [u8],
}

/// Reads one process; `Ok(None)` means "skip it" (no executable, or it went away).
fn read_one(dir: &Path, units: ProcessUnits) -> Result<Option<ProcessInfo>, String> {
    let executable = match fs::read_link(dir.join("exe")) {
        Ok(target) => target,
        // Kernel threads have no executable; for vanished or foreign processes skip as well.
        Err(_) => return Ok(None),
    };
    // Bytes, not text: a process may name itself anything (`prctl(PR_SET_NAME)`), and one
    // whose name is not UTF-8 must still be listed, not hidden.
    let stat = match fs::read(dir.join("stat")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) if is_gone(&err) => return Ok(None),
        Err(err) => return Err(format!("stat: {err}")),
    };
    let cmdline = match fs::read(dir.join("cmdline")) {
        Ok(bytes) => bytes,
        Err(err) if is_gone(&err) => return Ok(None),
        Err(err) => return Err(format!("cmdline: {err}")),
    };
    // No LSM, or no label: the field stays empty.
    let label = fs::read(dir.join("attr/current")).unwrap_or_default();
    let executable = executable.to_string_lossy();
    process_info(
        &Reading {
            stat: &stat,
            executable: &executable,
            cmdline: &cmdline,
            label: &label,
        },
        units,
    )
    .map(Some)
}

/// Builds the message from one process's files:
/// - `command` is the `comm` field of `stat` (the same text as `/proc/<pid>/comm`);
/// - `cpu_time` is `(utime + stime) / clock_ticks` seconds;
/// - `virtual_memory` is `vsize` in bytes; `resident_memory` is `rss` pages × page size;
/// - `args` is `cmdline` with trailing NULs dropped and the others replaced by spaces;
/// - `label` is `attr/current` without its trailing NUL or newline.
fn process_info(reading: &Reading<'_>, units: ProcessUnits) -> Result<ProcessInfo, String> {
    let stat = parse_stat(reading.stat)?;
    let ticks = units.clock_ticks.max(1) as f64;
    Ok(ProcessInfo {
        pid: stat.pid,
        ppid: stat.ppid,
        state: stat.state.to_owned(),
        threads: stat.threads,
        // Tick counts stay far below 2^53, so the conversion to f64 is exact.
        cpu_time: stat.utime.saturating_add(stat.stime) as f64 / ticks,
        virtual_memory: stat.vsize,
        resident_memory: stat.rss_pages.saturating_mul(units.page_size),
        command: stat.comm.to_owned(),
        executable: reading.executable.to_owned(),
        args: args(reading.cmdline),
        label: String::from_utf8_lossy(reading.label)
            .trim_end_matches(['\0', '\n'])
            .to_owned(),
    })
}

/// The fields of `/proc/<pid>/stat` machined reports.
#[derive(Debug, PartialEq)]
struct Stat<'a> {
    pid: i32,
    comm: &'a str,
    state: &'a str,
    ppid: i32,
    utime: u64,
    stime: u64,
    threads: i32,
    vsize: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. `comm` is in parentheses and may itself contain spaces and
/// parentheses, so it runs from the first `(` to the *last* `)`; fields after it are numbered
/// from 3 (state) as in proc(5).
fn parse_stat(text: &str) -> Result<Stat<'_>, String> {
    let open = text.find('(').ok_or("stat: no '('")?;
    let close = text.rfind(')').ok_or("stat: no ')'")?;
    if close < open {
        return Err("stat: ')' before '('".to_owned());
    }
    let pid = text[..open]
        .trim()
        .parse()
        .map_err(|_| format!("stat: pid {:?} is not a number", text[..open].trim()))?;
    let comm = &text[open + 1..close];
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[i] is proc(5) field i + 3.
    let field = |n: usize| -> Result<&str, String> {
        rest.get(n - 3)
            .copied()
            .ok_or_else(|| format!("stat: field {n} missing"))
    };
    let parse_u64 = |n: usize| -> Result<u64, String> {
        let value = field(n)?;
        value
            .parse()
            .map_err(|_| format!("stat: field {n} {value:?} is not a number"))
    };
    let parse_i32 = |n: usize| -> Result<i32, String> {
        let value = field(n)?;
        value
            .parse()
            .map_err(|_| format!("stat: field {n} {value:?} is not a number"))
    };
    // rss is signed in the kernel's format; a negative value never happens in practice and is
    // reported as 0 rather than failing the whole listing.
    let rss = field(24)?;
    let rss_pages = rss
        .parse::<i64>()
        .map_err(|_| format!("stat: field 24 {rss:?} is not a number"))?
        .max(0)
        .unsigned_abs();
    Ok(Stat {
        pid,
        comm,
        state: field(3)?,
        ppid: parse_i32(4)?,
        utime: parse_u64(14)?,
        stime: parse_u64(15)?,
        threads: parse_i32(20)?,
        vsize: parse_u64(23)?,
        rss_pages,
    })
}

/// `cmdline` as Talos shows it: trailing NULs dropped, the remaining NULs replaced by spaces.
fn args(cmdline: &[u8]) -> String {
    let end = cmdline
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    String::from_utf8_lossy(&cmdline[..end]).replace('\0', " ")
}

fn is_pid(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/<pid>/stat` of a process whose comm contains a space and a parenthesis.
    const STAT: &str = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1234 0 5 0 \
                        250 150 0 0 20 0 3 0 98765 123456789 2500 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";

    const UNITS: ProcessUnits = ProcessUnits {
        clock_ticks: 100,
        page_size: 4096,
    };

    #[test]
    fn stat_fields_are_taken_after_the_last_parenthesis() {
        let stat = parse_stat(STAT).expect("parses");
        assert_eq!(
            stat,
            Stat {
                pid: 4242,
                comm: "my (odd) cmd",
                state: "S",
                ppid: 1,
                utime: 250,
                stime: 150,
                threads: 3,
                vsize: 123_456_789,
                rss_pages: 2500,
            }
        );
    }

    #[test]
    fn process_info_converts_units_and_joins_arguments() {
        let info = process_info(
            &Reading {
                stat: STAT,
                executable: "/usr/bin/odd",
                cmdline: b"/usr/bin/odd\0--flag\0value with space\0",
                label: b"unconfined\n",
            },
            UNITS,
        )
        .expect("builds");
        assert_eq!(info.pid, 4242);
        assert_eq!(info.ppid, 1);
        assert_eq!(info.state, "S");
        assert_eq!(info.threads, 3);
        assert_eq!(info.cpu_time, 4.0);
        assert_eq!(info.virtual_memory, 123_456_789);
        assert_eq!(info.resident_memory, 2500 * 4096);
        assert_eq!(info.command, "my (odd) cmd");
        assert_eq!(info.executable, "/usr/bin/odd");
        assert_eq!(info.args, "/usr/bin/odd --flag value with space");
        assert_eq!(info.label, "unconfined");
    }

    #[test]
    fn empty_cmdline_gives_empty_args() {
        assert_eq!(args(b""), "");
        assert_eq!(args(b"\0\0"), "");
        assert_eq!(args(b"a"), "a");
    }

    #[test]
    fn truncated_stat_is_an_error() {
        assert!(parse_stat("1 (init) S 0 1").is_err());
        assert!(parse_stat("x (init) S").is_err());
        assert!(parse_stat("no parens").is_err());
    }

    #[test]
    fn only_numeric_names_are_pids() {
        assert!(is_pid(OsStr::new("1")));
        assert!(is_pid(OsStr::new("4242")));
        assert!(!is_pid(OsStr::new("self")));
        assert!(!is_pid(OsStr::new("")));
        assert!(!is_pid(OsStr::new("12a")));
    }
}
