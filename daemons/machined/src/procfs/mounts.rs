//! /proc/mounts → the list of mounts (source and mount point) to report with statfs sizes.

/// One line of /proc/mounts, with the kernel's octal escapes (`\040` for a space) decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// The mount source, e.g. `/dev/sda1` or `tmpfs` (Talos's `filesystem`).
    pub(crate) filesystem: String,
    /// The mount point (Talos's `mounted_on`).
    pub(crate) mounted_on: String,
}

/// Parses /proc/mounts (`source target fstype options dump pass`). Lines with fewer than two
/// fields are skipped, as Talos does.
pub(super) fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let filesystem = unescape(fields.next()?);
            let mounted_on = unescape(fields.next()?);
            Some(MountEntry {
                filesystem,
                mounted_on,
            })
        })
        .collect()
}

/// Decodes the `\ooo` octal escapes the kernel uses for space, tab, newline and backslash in
/// /proc/mounts. Anything that is not a valid three-digit escape is kept as written.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(value) = bytes.get(i + 1..i + 4).and_then(octal)
        {
            out.push(value);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Three octal digits as one byte, if they are octal digits and fit in a byte.
fn octal(digits: &[u8]) -> Option<u8> {
    digits
        .iter()
        .try_fold(0_u16, |acc, &d| match d {
            b'0'..=b'7' => Some(acc * 8 + u16::from(d - b'0')),
            _ => None,
        })
        .and_then(|value| u8::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = "\
proc /proc proc rw,relatime 0 0
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /mnt/with\\040space tmpfs rw 0 0
/dev/sdb1 /mnt/back\\134slash ext4 rw 0 0

short
";

    #[test]
    fn each_line_gives_source_and_mount_point() {
        let mounts = parse(FIXTURE);
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            mounts[1],
            MountEntry {
                filesystem: "/dev/sda1".to_owned(),
                mounted_on: "/".to_owned(),
            }
        );
    }

    #[test]
    fn octal_escapes_are_decoded() {
        let mounts = parse(FIXTURE);
        assert_eq!(mounts[2].mounted_on, "/mnt/with space");
        assert_eq!(mounts[3].mounted_on, "/mnt/back\\slash");
    }

    #[test]
    fn a_backslash_without_a_valid_escape_is_kept() {
        assert_eq!(unescape("a\\x"), "a\\x");
        assert_eq!(unescape("a\\09"), "a\\09");
        assert_eq!(unescape("a\\777"), "a\\777");
    }
}
