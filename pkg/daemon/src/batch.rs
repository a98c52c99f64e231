//! The loop of a thread that writes what other threads queue: apid's audit log and the daemons'
//! stderr (`stderr.rs`).
//!
//! It sleeps on the channel, hands every queued item to [`Batch::add`], calls [`Batch::end`] once
//! the queue is empty (write and flush there), then lingers before it sleeps on the channel again.
//! Under steady load the next items arrive within the linger, so senders find the thread awake
//! and never pay for waking it, and a busy daemon writes once per linger, not once per item.

use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

/// What the thread does with the items: take each, and finish a batch.
pub trait Batch<T> {
    /// One queued item.
    fn add(&mut self, item: T);
    /// The queue is empty: write and flush what was added.
    fn end(&mut self);
}

/// Runs until every sender is gone and the queue is empty.
pub fn drain_in_batches<T>(rx: &Receiver<T>, linger: Duration, batch: &mut impl Batch<T>) {
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        loop {
            while let Some(item) = next {
                batch.add(item);
                next = rx.try_recv().ok();
            }
            batch.end();
            std::thread::sleep(linger);
            match rx.try_recv() {
                Ok(item) => next = Some(item),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
}
