//! Go's `os.FileMode` bits, the encoding of `FileInfo.mode` on the wire (talos-facts.md §5):
//! Talos sends `uint32(fileInfo.Mode())`, not a Unix `st_mode`, and talosctl prints it with
//! `os.FileMode.String()`.

/// `d`: a directory.
pub(crate) const MODE_DIR: u32 = 1 << 31;
/// `L`: a symbolic link.
pub(crate) const MODE_SYMLINK: u32 = 1 << 27;
/// `D`: a device file (block or character).
pub(crate) const MODE_DEVICE: u32 = 1 << 26;
/// `p`: a named pipe (FIFO).
pub(crate) const MODE_NAMED_PIPE: u32 = 1 << 25;
/// `S`: a unix domain socket.
pub(crate) const MODE_SOCKET: u32 = 1 << 24;
/// `u`: setuid.
pub(crate) const MODE_SETUID: u32 = 1 << 23;
/// `g`: setgid.
pub(crate) const MODE_SETGID: u32 = 1 << 22;
/// `c`: a character device (set together with [`MODE_DEVICE`]).
pub(crate) const MODE_CHAR_DEVICE: u32 = 1 << 21;
/// `t`: sticky.
pub(crate) const MODE_STICKY: u32 = 1 << 20;

// The file-type part of a Unix st_mode (<sys/stat.h>; identical on every Linux architecture).
const S_IFMT: u32 = 0o170_000;
const S_IFSOCK: u32 = 0o140_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFIFO: u32 = 0o010_000;
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// Converts a Unix `st_mode` into Go's `os.FileMode`, exactly as Go's `fillFileStatFromSys`
/// does: the nine permission bits stay where they are, the file type and the
/// setuid/setgid/sticky bits move to Go's high bits. A regular file has no type bit.
pub(crate) fn go_file_mode(st_mode: u32) -> u32 {
    let mut mode = st_mode & 0o777;
    mode |= match st_mode & S_IFMT {
        S_IFBLK => MODE_DEVICE,
        S_IFCHR => MODE_DEVICE | MODE_CHAR_DEVICE,
        S_IFDIR => MODE_DIR,
        S_IFIFO => MODE_NAMED_PIPE,
        S_IFLNK => MODE_SYMLINK,
        S_IFSOCK => MODE_SOCKET,
        _ => 0,
    };
    if st_mode & S_ISUID != 0 {
        mode |= MODE_SETUID;
    }
    if st_mode & S_ISGID != 0 {
        mode |= MODE_SETGID;
    }
    if st_mode & S_ISVTX != 0 {
        mode |= MODE_STICKY;
    }
    mode
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    #[test]
    fn a_regular_file_keeps_only_its_permission_bits() {
        assert_eq!(go_file_mode(0o100_644), 0o644);
        assert_eq!(go_file_mode(0o100_000), 0);
    }

    #[test]
    fn file_types_move_to_go_high_bits() {
        assert_eq!(go_file_mode(0o040_755), MODE_DIR | 0o755);
        assert_eq!(go_file_mode(0o120_777), MODE_SYMLINK | 0o777);
        assert_eq!(go_file_mode(0o060_660), MODE_DEVICE | 0o660);
        assert_eq!(
            go_file_mode(0o020_666),
            MODE_DEVICE | MODE_CHAR_DEVICE | 0o666
        );
        assert_eq!(go_file_mode(0o010_600), MODE_NAMED_PIPE | 0o600);
        assert_eq!(go_file_mode(0o140_777), MODE_SOCKET | 0o777);
    }

    #[test]
    fn setuid_setgid_and_sticky_move_too() {
        assert_eq!(go_file_mode(0o104_755), MODE_SETUID | 0o755);
        assert_eq!(go_file_mode(0o102_755), MODE_SETGID | 0o755);
        assert_eq!(go_file_mode(0o041_777), MODE_DIR | MODE_STICKY | 0o777);
        assert_eq!(
            go_file_mode(0o107_700),
            MODE_SETUID | MODE_SETGID | MODE_STICKY | 0o700
        );
    }

    #[test]
    fn the_bit_values_are_gos() {
        // From Go's io/fs: ModeDir = 1<<31 … ModeSticky = 1<<20.
        assert_eq!(MODE_DIR, 0x8000_0000);
        assert_eq!(MODE_SYMLINK, 0x0800_0000);
        assert_eq!(MODE_DEVICE, 0x0400_0000);
        assert_eq!(MODE_NAMED_PIPE, 0x0200_0000);
        assert_eq!(MODE_SOCKET, 0x0100_0000);
        assert_eq!(MODE_SETUID, 0x0080_0000);
        assert_eq!(MODE_SETGID, 0x0040_0000);
        assert_eq!(MODE_CHAR_DEVICE, 0x0020_0000);
        assert_eq!(MODE_STICKY, 0x0010_0000);
    }

    #[test]
    fn real_files_convert_like_go() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let mode = |path: &std::path::Path| {
            go_file_mode(std::fs::symlink_metadata(path).expect("lstat").mode())
        };
        assert_eq!(mode(&file), 0o640);
        assert_eq!(mode(&link) & MODE_SYMLINK, MODE_SYMLINK);
        assert_eq!(mode(dir.path()) & MODE_DIR, MODE_DIR);
        let null = mode(std::path::Path::new("/dev/null"));
        assert_eq!(null & !0o777, MODE_DEVICE | MODE_CHAR_DEVICE);
    }
}
