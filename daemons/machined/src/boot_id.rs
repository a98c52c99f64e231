//! The node's boot id: a UUID that changes on every boot, which talosctl's `--wait` trackers
//! compare before and after a reboot (talos-facts.md §1.9).
//!
//! - **Metal mode**: machined is PID 1 and the kernel's `/proc/sys/kernel/random/boot_id` is
//!   the node's boot id; nothing is stored.
//! - **Container mode**: the kernel's value belongs to the host, whose boot is not the node's.
//!   machined generates a UUID v4 and keeps it in `<state>/boot_id` (mode 0644, written
//!   atomically), so tools on the host can read it too. A new one is generated **at every
//!   machined start** (a restart of the machined process is the container-mode equivalent of a
//!   boot: every service is started afresh) and **at every container-mode reboot**. Without a
//!   state directory (tests) it lives in memory only.
//!
//! `Read` of [`BOOT_ID_PATH`] through the API answers with [`BootId::current`] in both modes
//! (see [`BootId::read_override`]), so a client sees the node's boot id, not the host's.

use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use basalt_api::common;
use basalt_config::fs::{Overwrite, write_atomic};

use crate::Error;
use crate::config::Mode;
use crate::services::BoxStream;

/// Where Linux publishes the boot id, and the path talosctl reads through `Read`.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Name of the boot-id file in machined's state directory.
pub const BOOT_ID_FILE: &str = "boot_id";

/// Mode of `<state>/boot_id`: not a secret.
const BOOT_ID_FILE_MODE: u32 = 0o644;

/// The node's boot id; cheap to clone (clones share the value).
#[derive(Clone, Debug)]
pub struct BootId {
    inner: Arc<Inner>,
}

#[derive(Debug)]
enum Inner {
    /// Metal mode: the kernel's value, read on every call.
    Kernel,
    /// Container mode: machined's own value, persisted to `file` when set.
    Generated {
        current: Mutex<String>,
        file: Option<PathBuf>,
    },
}

impl BootId {
    /// The boot id for `mode`. In container mode a new id is generated and, with a state
    /// directory, written to `<state_dir>/boot_id`.
    pub fn start(mode: Mode, state_dir: Option<&Path>) -> Result<Self, Error> {
        match mode {
            Mode::Metal => Ok(BootId {
                inner: Arc::new(Inner::Kernel),
            }),
            Mode::Container => {
                let boot_id = BootId {
                    inner: Arc::new(Inner::Generated {
                        current: Mutex::new(String::new()),
                        file: state_dir.map(|dir| dir.join(BOOT_ID_FILE)),
                    }),
                };
                boot_id.renew()?;
                Ok(boot_id)
            }
        }
    }

    /// The current boot id (36 characters, lower-case hex with dashes), without a newline.
    pub fn current(&self) -> Result<String, Error> {
        match &*self.inner {
            Inner::Kernel => std::fs::read_to_string(BOOT_ID_PATH)
                .map(|text| text.trim().to_owned())
                .map_err(|source| Error::BootId {
                    path: PathBuf::from(BOOT_ID_PATH),
                    source,
                }),
            Inner::Generated { current, .. } => Ok(lock(current).clone()),
        }
    }

    /// Starts a new boot: generates a new id (container mode) and persists it. In metal mode
    /// the kernel does this on a real reboot, and this does nothing.
    pub fn renew(&self) -> Result<String, Error> {
        match &*self.inner {
            Inner::Kernel => self.current(),
            Inner::Generated { current, file } => {
                let id = uuid_v4().map_err(|source| Error::BootId {
                    path: PathBuf::from(RANDOM_SOURCE),
                    source,
                })?;
                if let Some(file) = file {
                    write_atomic(
                        file,
                        format!("{id}\n").as_bytes(),
                        BOOT_ID_FILE_MODE,
                        Overwrite::Allow,
                    )
                    .map_err(|source| Error::BootId {
                        path: file.clone(),
                        source: io::Error::other(source),
                    })?;
                }
                *lock(current) = id.clone();
                tracing::info!(boot_id = %id, "New boot id");
                Ok(id)
            }
        }
    }

    /// The file the id is persisted in (container mode with a state directory).
    pub fn file(&self) -> Option<&Path> {
        match &*self.inner {
            Inner::Kernel => None,
            Inner::Generated { file, .. } => file.as_deref(),
        }
    }

    /// `Read`'s answer for [`BOOT_ID_PATH`]: the node's boot id followed by a newline, as the
    /// kernel file reads. `None` for any other path (`//proc/./sys/…` spellings count as the
    /// same path), which the files API then serves.
    pub(crate) fn read_override(
        &self,
        path: &str,
    ) -> Option<Result<BoxStream<common::Data>, Error>> {
        if !Path::new(path)
            .components()
            .eq(Path::new(BOOT_ID_PATH).components())
        {
            return None;
        }
        Some(self.current().map(|id| {
            let data = common::Data {
                metadata: None,
                bytes: format!("{id}\n").into_bytes(),
            };
            Box::pin(tokio_stream::once(Ok(data))) as BoxStream<common::Data>
        }))
    }
}

/// Where randomness for new ids comes from.
const RANDOM_SOURCE: &str = "/dev/urandom";

/// A random (version 4, RFC 9562 variant) UUID in its usual text form. The kernel's boot id
/// has the same form.
pub(crate) fn uuid_v4() -> io::Result<String> {
    let mut bytes = [0_u8; 16];
    std::fs::File::open(RANDOM_SOURCE)?.read_exact(&mut bytes)?;
    Ok(format_uuid_v4(bytes))
}

/// Sets the version and variant bits of 16 random bytes and formats them 8-4-4-4-12.
fn format_uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = basalt_pki::hex(&bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn lock(value: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    // A string assignment cannot be left half done by a panic.
    value.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    #[test]
    fn uuids_have_version_4_and_the_rfc_variant() {
        assert_eq!(
            format_uuid_v4([0xff; 16]),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert_eq!(
            format_uuid_v4([0; 16]),
            "00000000-0000-4000-8000-000000000000"
        );
        let id = uuid_v4().expect("uuid");
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }

    #[test]
    fn container_boot_ids_are_persisted_and_renewed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let boot_id = BootId::start(Mode::Container, Some(dir.path())).expect("start");
        let first = boot_id.current().expect("current");
        let file = dir.path().join(BOOT_ID_FILE);
        assert_eq!(boot_id.file(), Some(file.as_path()));
        assert_eq!(
            std::fs::read_to_string(&file).expect("file"),
            format!("{first}\n")
        );

        let second = boot_id.renew().expect("renew");
        assert_ne!(first, second);
        assert_eq!(boot_id.current().expect("current"), second);
        assert_eq!(
            std::fs::read_to_string(&file).expect("file"),
            format!("{second}\n")
        );

        // A restart of machined is a new boot.
        let again = BootId::start(Mode::Container, Some(dir.path())).expect("restart");
        assert_ne!(again.current().expect("current"), second);
    }

    #[test]
    fn metal_mode_reports_the_kernel_boot_id() {
        let boot_id = BootId::start(Mode::Metal, None).expect("start");
        if let Ok(kernel) = std::fs::read_to_string(BOOT_ID_PATH) {
            assert_eq!(boot_id.current().expect("current"), kernel.trim());
            assert_eq!(boot_id.renew().expect("renew"), kernel.trim());
        }
        assert!(boot_id.file().is_none());
    }

    #[tokio::test]
    async fn reading_the_kernel_path_answers_with_the_node_boot_id() {
        let boot_id = BootId::start(Mode::Container, None).expect("start");
        let id = boot_id.current().expect("current");
        for path in [BOOT_ID_PATH, "//proc/sys/./kernel/random/boot_id"] {
            let mut stream = boot_id
                .read_override(path)
                .expect("overridden")
                .expect("stream");
            let chunk = stream.next().await.expect("one chunk").expect("ok");
            assert_eq!(chunk.bytes, format!("{id}\n").into_bytes());
            assert!(stream.next().await.is_none());
        }
        assert!(boot_id.read_override("/etc/hostname").is_none());
        assert!(
            boot_id
                .read_override("/proc/sys/kernel/random/uuid")
                .is_none()
        );
    }
}
