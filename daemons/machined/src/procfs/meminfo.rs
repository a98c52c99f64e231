//! /proc/meminfo → `machine.MemInfo` (48 fields, values in kB exactly as the kernel prints them).

use basalt_api::machine::MemInfo;

/// Parses /proc/meminfo. Keys are matched after lower-casing and dropping everything but letters
/// and digits (`Active(anon)` → `activeanon`, `HugePages_Total` → `hugepagestotal`), which is how
/// Talos's field names were derived. Keys the message has no field for are ignored, and fields
/// the kernel does not print stay 0.
pub(super) fn parse(text: &str) -> Result<MemInfo, String> {
    let mut info = MemInfo::default();
    let mut seen_total = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let key: String = key
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let Some(field) = field(&mut info, &key) else {
            continue;
        };
        *field = super::number(value, &key)?;
        seen_total |= key == "memtotal";
    }
    if !seen_total {
        return Err("no MemTotal line".to_owned());
    }
    Ok(info)
}

/// The `MemInfo` field for a normalised key, if the message has one.
fn field<'a>(info: &'a mut MemInfo, key: &str) -> Option<&'a mut u64> {
    Some(match key {
        "memtotal" => &mut info.memtotal,
        "memfree" => &mut info.memfree,
        "memavailable" => &mut info.memavailable,
        "buffers" => &mut info.buffers,
        "cached" => &mut info.cached,
        "swapcached" => &mut info.swapcached,
        "active" => &mut info.active,
        "inactive" => &mut info.inactive,
        "activeanon" => &mut info.activeanon,
        "inactiveanon" => &mut info.inactiveanon,
        "activefile" => &mut info.activefile,
        "inactivefile" => &mut info.inactivefile,
        "unevictable" => &mut info.unevictable,
        "mlocked" => &mut info.mlocked,
        "swaptotal" => &mut info.swaptotal,
        "swapfree" => &mut info.swapfree,
        "dirty" => &mut info.dirty,
        "writeback" => &mut info.writeback,
        "anonpages" => &mut info.anonpages,
        "mapped" => &mut info.mapped,
        "shmem" => &mut info.shmem,
        "slab" => &mut info.slab,
        "sreclaimable" => &mut info.sreclaimable,
        "sunreclaim" => &mut info.sunreclaim,
        "kernelstack" => &mut info.kernelstack,
        "pagetables" => &mut info.pagetables,
        "nfsunstable" => &mut info.nfsunstable,
        "bounce" => &mut info.bounce,
        "writebacktmp" => &mut info.writebacktmp,
        "commitlimit" => &mut info.commitlimit,
        "committedas" => &mut info.committedas,
        "vmalloctotal" => &mut info.vmalloctotal,
        "vmallocused" => &mut info.vmallocused,
        "vmallocchunk" => &mut info.vmallocchunk,
        "hardwarecorrupted" => &mut info.hardwarecorrupted,
        "anonhugepages" => &mut info.anonhugepages,
        "shmemhugepages" => &mut info.shmemhugepages,
        "shmempmdmapped" => &mut info.shmempmdmapped,
        "cmatotal" => &mut info.cmatotal,
        "cmafree" => &mut info.cmafree,
        "hugepagestotal" => &mut info.hugepagestotal,
        "hugepagesfree" => &mut info.hugepagesfree,
        "hugepagesrsvd" => &mut info.hugepagesrsvd,
        "hugepagessurp" => &mut info.hugepagessurp,
        "hugepagesize" => &mut info.hugepagesize,
        "directmap4k" => &mut info.directmap4k,
        "directmap2m" => &mut info.directmap2m,
        "directmap1g" => &mut info.directmap1g,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/meminfo of an x86_64 6.x kernel (trimmed of a few keys the message does not carry,
    /// and with one it does not know, `Zswap`, kept to show it is ignored).
    const FIXTURE: &str = "\
MemTotal:       16337084 kB
MemFree:         1180884 kB
MemAvailable:   11092440 kB
Buffers:          615204 kB
Cached:          9201024 kB
SwapCached:         1024 kB
Active:          6014292 kB
Inactive:        7641628 kB
Active(anon):    3716356 kB
Inactive(anon):   150860 kB
Active(file):    2297936 kB
Inactive(file):  7490768 kB
Unevictable:       41012 kB
Mlocked:              16 kB
SwapTotal:       2097148 kB
SwapFree:        2000000 kB
Zswap:                 0 kB
Dirty:              1268 kB
Writeback:             4 kB
AnonPages:       3874900 kB
Mapped:          1245084 kB
Shmem:            263528 kB
Slab:             896548 kB
SReclaimable:     693644 kB
SUnreclaim:       202904 kB
KernelStack:       23040 kB
PageTables:        60208 kB
NFS_Unstable:          7 kB
Bounce:                8 kB
WritebackTmp:          9 kB
CommitLimit:    10265688 kB
Committed_AS:   14852684 kB
VmallocTotal:   34359738367 kB
VmallocUsed:       80596 kB
VmallocChunk:          0 kB
HardwareCorrupted:     0 kB
AnonHugePages:    985088 kB
ShmemHugePages:     2048 kB
ShmemPmdMapped:       10 kB
CmaTotal:             11 kB
CmaFree:              12 kB
HugePages_Total:       4
HugePages_Free:        3
HugePages_Rsvd:        2
HugePages_Surp:        1
Hugepagesize:       2048 kB
DirectMap4k:      630380 kB
DirectMap2M:    12906496 kB
DirectMap1G:     4194304 kB
";

    #[test]
    fn every_field_is_read_in_kilobytes() {
        let info = parse(FIXTURE).expect("parses");
        assert_eq!(info.memtotal, 16_337_084);
        assert_eq!(info.memavailable, 11_092_440);
        assert_eq!(info.activeanon, 3_716_356);
        assert_eq!(info.inactivefile, 7_490_768);
        assert_eq!(info.swapfree, 2_000_000);
        assert_eq!(info.sreclaimable, 693_644);
        assert_eq!(info.sunreclaim, 202_904);
        assert_eq!(info.nfsunstable, 7);
        assert_eq!(info.writebacktmp, 9);
        assert_eq!(info.committedas, 14_852_684);
        assert_eq!(info.vmalloctotal, 34_359_738_367);
        assert_eq!(info.shmempmdmapped, 10);
        assert_eq!(info.cmafree, 12);
        assert_eq!(
            (
                info.hugepagestotal,
                info.hugepagesfree,
                info.hugepagesrsvd,
                info.hugepagessurp
            ),
            (4, 3, 2, 1)
        );
        assert_eq!(info.hugepagesize, 2048);
        assert_eq!(info.directmap4k, 630_380);
        assert_eq!(info.directmap2m, 12_906_496);
        assert_eq!(info.directmap1g, 4_194_304);
    }

    #[test]
    fn all_48_fields_have_a_key() {
        // Every line of the fixture but Zswap maps to a field, and the fixture has all 48.
        let mut info = MemInfo::default();
        let known = FIXTURE
            .lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(key, _)| {
                let key: String = key
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                field(&mut info, &key).is_some()
            })
            .count();
        assert_eq!(known, 48);
    }

    #[test]
    fn a_malformed_value_is_an_error_naming_the_key() {
        let err = parse("MemTotal: lots kB\n").expect_err("not a number");
        assert!(err.contains("memtotal"), "{err}");
    }

    #[test]
    fn text_without_memtotal_is_an_error() {
        assert!(parse("").is_err());
    }
}
