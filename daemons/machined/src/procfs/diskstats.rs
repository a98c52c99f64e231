//! /proc/diskstats → `machine.DiskStats`: every block device and their sum.

use basalt_api::machine::{DiskStat, DiskStats};

use super::number;

/// Parses /proc/diskstats: `major minor name` followed by 11 (before Linux 4.18), 15 (4.18+) or
/// 17 (5.5+) counters. The first 15 counters map onto `DiskStat` fields 2–16 in order; counters
/// an older kernel does not print stay 0, and the two flush counters of 5.5+ have no field.
///
/// `total` (named `total`) sums every line, partitions included, like Talos.
pub(super) fn parse(text: &str) -> Result<DiskStats, String> {
    let mut devices = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let [_major, _minor, name, counters @ ..] = fields.as_slice() else {
            return Err(format!("{line:?}: too few fields"));
        };
        if counters.len() < 11 {
            return Err(format!(
                "{name}: {} counters, expected at least 11",
                counters.len()
            ));
        }
        let mut values = [0_u64; 15];
        for (slot, counter) in values.iter_mut().zip(counters.iter()) {
            *slot = number(counter, name)?;
        }
        devices.push(disk_stat((*name).to_owned(), values));
    }
    let mut sum = [0_u64; 15];
    for device in &devices {
        for (slot, value) in sum.iter_mut().zip(counters_of(device)) {
            *slot = slot.wrapping_add(value);
        }
    }
    Ok(DiskStats {
        metadata: None,
        total: Some(disk_stat("total".to_owned(), sum)),
        devices,
    })
}

fn disk_stat(name: String, v: [u64; 15]) -> DiskStat {
    DiskStat {
        name,
        read_completed: v[0],
        read_merged: v[1],
        read_sectors: v[2],
        read_time_ms: v[3],
        write_completed: v[4],
        write_merged: v[5],
        write_sectors: v[6],
        write_time_ms: v[7],
        io_in_progress: v[8],
        io_time_ms: v[9],
        io_time_weighted_ms: v[10],
        discard_completed: v[11],
        discard_merged: v[12],
        discard_sectors: v[13],
        discard_time_ms: v[14],
    }
}

fn counters_of(d: &DiskStat) -> [u64; 15] {
    [
        d.read_completed,
        d.read_merged,
        d.read_sectors,
        d.read_time_ms,
        d.write_completed,
        d.write_merged,
        d.write_sectors,
        d.write_time_ms,
        d.io_in_progress,
        d.io_time_ms,
        d.io_time_weighted_ms,
        d.discard_completed,
        d.discard_merged,
        d.discard_sectors,
        d.discard_time_ms,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5.5+ kernel (17 counters) and one old-style line (11 counters).
    const FIXTURE: &str = "\
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 259       0 nvme0n1 1000 10 20000 300 2000 20 40000 600 1 700 900 5 6 7 8 9 10
 259       1 nvme0n1p1 11 1 22 3 44 5 66 7 0 8 9
";

    #[test]
    fn each_line_becomes_a_device_with_counters_in_order() {
        let stats = parse(FIXTURE).expect("parses");
        let names: Vec<&str> = stats.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop0", "nvme0n1", "nvme0n1p1"]);
        let nvme = &stats.devices[1];
        assert_eq!(nvme.read_completed, 1000);
        assert_eq!(nvme.write_sectors, 40_000);
        assert_eq!(nvme.io_in_progress, 1);
        assert_eq!(nvme.io_time_weighted_ms, 900);
        assert_eq!(nvme.discard_completed, 5);
        assert_eq!(nvme.discard_time_ms, 8);
        let old = &stats.devices[2];
        assert_eq!(old.io_time_weighted_ms, 9);
        assert_eq!(old.discard_completed, 0);
    }

    #[test]
    fn total_sums_every_line() {
        let total = parse(FIXTURE).expect("parses").total.expect("total");
        assert_eq!(total.name, "total");
        assert_eq!(total.read_completed, 1011);
        assert_eq!(total.write_completed, 2044);
        assert_eq!(total.discard_sectors, 7);
    }

    #[test]
    fn short_or_garbled_lines_are_errors() {
        assert!(parse("8 0 sda 1 2 3\n").is_err());
        assert!(parse("8 0 sda 1 2 3 4 5 6 7 8 9 x 11\n").is_err());
    }
}
