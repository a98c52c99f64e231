//! A concurrency limit for per-node calls: at most `limit` of them in flight at once.
//!
//! Fan-out to many nodes must not open one call per node all at the same moment (a hundred
//! nodes would be a hundred streams on one connection and a hundred tasks); talosctl bounds
//! its own fan-out the same way. Calls are started in order, each spawned only when a slot is
//! free, and their outputs come back in the order they were given.

use std::future::Future;

use tokio::task::{JoinError, JoinSet};

/// How many per-node calls run at once unless told otherwise (`basaltctl --parallel`).
pub const DEFAULT_CONCURRENCY: usize = 10;

/// Runs `futures` with at most `limit` of them spawned at any time (a `limit` of 0 counts as
/// 1) and returns their outputs in input order. A task that panicked yields its `JoinError`.
pub async fn bounded<F>(limit: usize, futures: Vec<F>) -> Vec<Result<F::Output, JoinError>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let limit = limit.max(1);
    let total = futures.len();
    let mut outputs: Vec<Option<Result<F::Output, JoinError>>> =
        std::iter::repeat_with(|| None).take(total).collect();
    let mut waiting = futures.into_iter().enumerate();
    let mut running = JoinSet::new();
    // The index travels beside the task (not inside it) so a panicked task still finds its slot.
    let mut index_of = std::collections::HashMap::new();
    loop {
        while running.len() < limit {
            let Some((index, future)) = waiting.next() else {
                break;
            };
            let handle = running.spawn(future);
            index_of.insert(handle.id(), index);
        }
        let Some(done) = running.join_next_with_id().await else {
            break;
        };
        let (id, output) = match done {
            Ok((id, output)) => (id, Ok(output)),
            Err(err) => (err.id(), Err(err)),
        };
        if let Some(index) = index_of.remove(&id)
            && let Some(slot) = outputs.get_mut(index)
        {
            *slot = Some(output);
        }
    }
    // Every task was joined above, so every slot is filled; `flatten` only guards the invariant.
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Counts calls in flight and remembers the most seen at once.
    #[derive(Default)]
    struct Gauge {
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    fn call(gauge: &Arc<Gauge>, value: usize) -> impl Future<Output = usize> + Send + 'static {
        let gauge = Arc::clone(gauge);
        async move {
            let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.peak.fetch_max(now, Ordering::SeqCst);
            // Later calls finish sooner, so completion order differs from input order.
            tokio::time::sleep(Duration::from_millis(20 - (value % 20) as u64)).await;
            gauge.now.fetch_sub(1, Ordering::SeqCst);
            value
        }
    }

    #[tokio::test]
    async fn never_more_than_the_limit_in_flight_and_outputs_in_input_order() {
        let gauge = Arc::new(Gauge::default());
        let futures = (0..25).map(|i| call(&gauge, i)).collect();
        let outputs: Vec<usize> = bounded(3, futures)
            .await
            .into_iter()
            .map(|output| output.expect("no panic"))
            .collect();
        assert_eq!(outputs, (0..25).collect::<Vec<_>>());
        assert_eq!(gauge.peak.load(Ordering::SeqCst), 3);
        assert_eq!(gauge.now.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_zero_limit_still_runs_everything_one_at_a_time() {
        let gauge = Arc::new(Gauge::default());
        let futures = (0..4).map(|i| call(&gauge, i)).collect();
        assert_eq!(bounded(0, futures).await.len(), 4);
        assert_eq!(gauge.peak.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_call_is_an_error_in_its_own_slot() {
        let futures: Vec<std::pin::Pin<Box<dyn Future<Output = u8> + Send>>> = vec![
            Box::pin(async { 1 }),
            Box::pin(async { panic!("boom") }),
            Box::pin(async { 3 }),
        ];
        let outputs = bounded(2, futures).await;
        assert_eq!(outputs.len(), 3);
        assert_eq!(*outputs[0].as_ref().expect("first"), 1);
        assert!(outputs[1].as_ref().is_err_and(JoinError::is_panic));
        assert_eq!(*outputs[2].as_ref().expect("third"), 3);
    }
}
