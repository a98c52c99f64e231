//! The registry of processes machined spawned itself, and the reaper of everything else.
//!
//! machined is a child subreaper (and, in metal mode, PID 1): processes that its services
//! leave behind (`sh -c '(sleep 1 &)'`) are re-parented to it, and nobody but machined can
//! reap them. Its own children, on the other hand, are waited for by tokio (`Child::wait`),
//! which needs their exit status; reaping one of those first would turn the runner's wait
//! into ECHILD.
//!
//! So every child machined spawns goes through [`spawn`], which registers its pid in [`OWNED`]
//! *under the same lock* the reaper holds while it looks for orphans. The reaper
//! ([`reap_orphans`]) wakes on SIGCHLD (and every [`REAP_BACKSTOP`]), takes the lock, and
//! reaps exited children whose pid is not registered. That is race-free:
//! - a child being spawned is registered before the reaper can look (fork and registration
//!   happen while the lock is held);
//! - a registered pid leaves the registry only once tokio has reaped it: an [`OwnedChild`]
//!   dropped before its process was waited for kills it and waits for it in a task, and only
//!   then unregisters it. Until then the pid cannot be reused, so an unregistered zombie is
//!   always an adopted orphan, and no pid is ever waited for by both;
//! - tokio waits only for the pids it spawned (`waitpid(pid)`, never `P_ALL`), so it never
//!   takes an orphan from the reaper either.
//!
//! The reaper first peeks (`waitid(P_ALL, WNOWAIT)`): nothing exited, nothing to do. If the
//! peeked child is an orphan it is reaped at once; if it is one of machined's own (tokio will
//! collect it), the reaper falls back to listing all children and reaps the exited orphans
//! among them.

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

/// Pids of the children machined spawned and tokio waits for.
static OWNED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// How often the reaper looks even without a SIGCHLD (signals coalesce; this bounds how long
/// a zombie could stay if one were ever missed).
pub(crate) const REAP_BACKSTOP: Duration = Duration::from_secs(10);

/// How many orphans one pass reaps at most before yielding to the runtime.
const MAX_REAPED_PER_PASS: usize = 1024;

/// A child machined spawned, registered so the orphan reaper leaves it to tokio; derefs to
/// the tokio [`Child`]. Dropping it before the process was waited for kills the process and
/// waits for it in a task; the pid is unregistered once it was reaped.
#[derive(Debug)]
pub(crate) struct OwnedChild {
    /// `None` only while dropping.
    child: Option<Child>,
    pid: u32,
}

impl OwnedChild {
    /// The pid (kept after the child was reaped, unlike [`Child::id`]).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}

impl Deref for OwnedChild {
    type Target = Child;

    fn deref(&self) -> &Child {
        // Only `drop` takes it out.
        self.child.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for OwnedChild {
    fn deref_mut(&mut self) -> &mut Child {
        self.child.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        let pid = self.pid;
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Reaped already (waited for, or exited just now and collected by this call).
        if let Ok(Some(_)) = child.try_wait() {
            owned().remove(&pid);
            return;
        }
        let _ = child.start_kill();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = child.wait().await;
                    owned().remove(&pid);
                });
            }
            // No runtime left to wait with: the pid stays registered, so the reaper never
            // takes it from whoever collects it (nobody, at process exit).
            Err(_) => drop(child),
        }
    }
}

/// Spawns `command` and registers its pid, so the orphan reaper leaves it to tokio.
pub(crate) fn spawn(command: &mut Command) -> std::io::Result<OwnedChild> {
    let mut owned = owned();
    let child = command.spawn()?;
    let Some(pid) = child.id() else {
        // Only possible once the child was reaped, which nothing has done yet.
        return Err(std::io::Error::other("the new process has no pid"));
    };
    owned.insert(pid);
    Ok(OwnedChild {
        child: Some(child),
        pid,
    })
}

fn owned() -> MutexGuard<'static, BTreeSet<u32>> {
    // Inserts and removes only: a poisoned set is still consistent.
    OWNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes machined a child subreaper and reaps the orphans it adopts until the process ends.
///
/// Only for the machined binary: a process that spawns children outside [`spawn`] (a test
/// binary running machined in-process) must not run the reaper, or it would reap those.
pub fn reap_orphans() {
    if let Err(err) = basalt_sys::set_child_subreaper() {
        // Without it (PID 1 aside) orphans go to init, which reaps them: not fatal.
        tracing::warn!(
            error = &err as &dyn std::error::Error,
            "Cannot become a child subreaper; orphaned processes go to init"
        );
    }
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(sigchld) => Some(sigchld),
        Err(err) => {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                backstop_s = REAP_BACKSTOP.as_secs(),
                "Cannot listen for SIGCHLD; reaping orphans on a timer only"
            );
            None
        }
    };
    tokio::spawn(async move {
        let mut backstop = tokio::time::interval(REAP_BACKSTOP);
        backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match &mut sigchld {
                Some(sigchld) => tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = backstop.tick() => {}
                },
                None => {
                    backstop.tick().await;
                }
            }
            reap_pass();
        }
    });
}

/// Reaps every exited child that machined did not spawn; returns their pids.
pub(crate) fn reap_pass() -> Vec<u32> {
    let owned = owned();
    let mut reaped = Vec::new();
    while reaped.len() < MAX_REAPED_PER_PASS {
        match basalt_sys::peek_exited_child() {
            Ok(None) => break,
            Ok(Some(pid)) if !owned.contains(&pid) => match reap_one(pid) {
                Some(pid) => reaped.push(pid),
                // Not reapable after all (gone meanwhile): look at all children instead.
                None => {
                    reaped.extend(reap_listed(&owned));
                    break;
                }
            },
            // One of ours hides the rest: tokio collects it; list the children to find the
            // orphans behind it.
            Ok(Some(_)) => {
                reaped.extend(reap_listed(&owned));
                break;
            }
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "Cannot look for exited children"
                );
                break;
            }
        }
    }
    reaped
}

/// Reaps the exited children among those listed in /proc that are not registered.
fn reap_listed(owned: &BTreeSet<u32>) -> Vec<u32> {
    let children = match basalt_sys::child_pids() {
        Ok(children) => children,
        Err(err) => {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "Cannot list machined's children"
            );
            return Vec::new();
        }
    };
    children
        .into_iter()
        .filter(|pid| !owned.contains(pid))
        .filter_map(reap_one)
        .collect()
}

fn reap_one(pid: u32) -> Option<u32> {
    match basalt_sys::reap(pid) {
        Ok(Some(how)) => {
            tracing::debug!(pid, ended = ?how, "Reaped an orphaned process");
            Some(pid)
        }
        Ok(None) => None,
        Err(err) => {
            tracing::warn!(
                pid,
                error = &err as &dyn std::error::Error,
                "Cannot reap an orphaned process"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(pid: u32) -> bool {
        owned().contains(&pid)
    }

    #[tokio::test]
    async fn a_waited_child_is_unregistered_when_dropped() {
        let mut child = spawn(Command::new("true").kill_on_drop(true)).expect("spawn");
        let pid = child.pid();
        assert!(registered(pid));
        assert!(child.wait().await.expect("wait").success());
        // Reaped by tokio, still registered until the handle goes.
        assert!(registered(pid));
        drop(child);
        assert!(!registered(pid));
    }

    #[tokio::test]
    async fn a_child_dropped_while_running_is_killed_reaped_and_then_unregistered() {
        let child = spawn(Command::new("sleep").arg("30").kill_on_drop(true)).expect("spawn");
        let pid = child.pid();
        drop(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while registered(pid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{pid} still registered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Gone for good: no zombie left behind either.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
