//! Host access for basalt: the only crate allowed to list `nix`/`libc`/`rustix` or to hold
//! `unsafe`.
//!
//! This crate owns:
//! - the [`Host`] trait, behind which every side effect on the machine sits (reboot, power-off,
//!   hostname, …), with [`ContainerHost`], the container-mode implementation that never touches
//!   the host and records what was asked of it in-process, and [`RealHost`] (metal mode:
//!   `sync(2)` + `reboot(2)`, never used in tests);
//! - small safe wrappers around the syscalls machined needs for its read-only handlers
//!   ([`statfs`], [`hostname`], [`uname`], [`current_uid`], [`page_size`], [`clock_ticks`]), and
//!   [`terminate`] and [`terminate_process_group`] for the children machined supervises, each
//!   returning a typed [`Error`];
//! - [`open_nonblocking`] (`O_NONBLOCK`, for `/dev/kmsg` and for files that might be FIFOs),
//!   [`wait_readable`] (`poll(2)`) and [`xattrs`] (extended attributes, through rustix's safe
//!   wrappers) for machined's file API and Dmesg;
//! - [`set_child_subreaper`], [`child_pids`], [`peek_exited_child`] and [`reap`] for a
//!   process that adopts orphans (PID 1 or a subreaper) and must reap them without taking the
//!   exit status of its own children away from its runtime;
//! - [`is_running`] and [`kill_process_group`] for daemons known only by a pid file (the local
//!   cluster `basaltctl cluster` starts detached and stops from a later invocation);
//! - socket-file preparation for unix-socket servers ([`prepare_socket_dir`],
//!   [`remove_stale_socket`], [`set_mode`]).
//!
//! It must not depend on tonic, tokio or any other basalt crate, and holds no business logic.
//!
//! Today every wrapper goes through nix's safe API or std, so the workspace-wide
//! `forbid(unsafe_code)` still applies here. Should a syscall ever need `unsafe`, this is the one
//! crate where the lint may be relaxed, and every block then needs a `// SAFETY:` paragraph (the
//! two lints below are set so that rule is already enforced).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod detached;
mod error;
mod files;
mod host;
mod process;
mod reap;
mod socket;
mod system;

pub use crate::detached::{is_running, kill_process_group};
pub use crate::error::Error;
pub use crate::files::{Xattr, open_nonblocking, wait_readable, xattrs};
pub use crate::host::{ContainerHost, Host, HostAction, RealHost};
pub use crate::process::{terminate, terminate_process_group};
pub use crate::reap::{
    Reaped, child_pids, is_child_subreaper, peek_exited_child, reap, set_child_subreaper,
};
pub use crate::socket::{DirState, prepare_socket_dir, remove_stale_socket, set_mode};
pub use crate::system::{
    FsStats, Uname, clock_ticks, current_uid, hostname, page_size, statfs, uname,
};
