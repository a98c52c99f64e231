//! The `Events` RPC: a hello, a backlog, then the live stream of the node's [`EventBus`].
//!
//! 1. The follower subscribes to the bus **before** anything is sent, so the first message —
//!    the empty "hello" event (`data` unset, a fresh id, `actor_id` = the request's
//!    `with_actor_id`) that talosctl waits for — promises that every later event reaches it.
//! 2. The backlog: `tail_events` (negative: the whole ring), `tail_id` (the events after that
//!    one; an id no longer in the ring selects the whole ring) or `tail_seconds`; at most one
//!    of them may be set (InvalidArgument otherwise, as Talos). None set: no backlog.
//! 3. New events as they are published, until the client leaves or machined shuts down (then
//!    the stream ends cleanly after the events already received).
//!
//! `with_actor_id` keeps only that actor's events (backlog and live). Memory per follower is
//! bounded: [`EVENTS_BUFFER`] messages wait for the client, and a follower that falls behind
//! the bus's capacity skips the events it missed (logged as a warning) instead of buffering.

use std::time::Duration;

use basalt_api::machine;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::Error;
use crate::events::{Event, EventBus, Tail};
use crate::services::BoxStream;
use crate::supervise::stopped;

/// Messages waiting for a slow `Events` client before the follower stops reading the bus.
pub(crate) const EVENTS_BUFFER: usize = 64;

/// Starts one follower; see the module docs.
pub(crate) fn stream(
    bus: &EventBus,
    request: machine::EventsRequest,
    closing: watch::Receiver<bool>,
) -> Result<BoxStream<machine::Event>, Error> {
    let tail = tail(&request)?;
    let actor = (!request.with_actor_id.is_empty()).then(|| request.with_actor_id.clone());
    let (backlog, live) = bus.subscribe_with(&tail);
    let hello = machine::Event {
        metadata: None,
        data: None,
        id: bus.new_id(),
        actor_id: request.with_actor_id,
    };
    let (tx, rx) = mpsc::channel(EVENTS_BUFFER);
    tokio::spawn(follow(hello, backlog, live, actor, closing, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Reads `EventsRequest`'s tail fields.
fn tail(request: &machine::EventsRequest) -> Result<Tail, Error> {
    let set = [
        request.tail_events != 0,
        !request.tail_id.is_empty(),
        request.tail_seconds != 0,
    ]
    .into_iter()
    .filter(|set| *set)
    .count();
    if set > 1 {
        return Err(Error::InvalidArgument {
            reason: "tail_events, tail_id and tail_seconds are mutually exclusive".to_owned(),
        });
    }
    Ok(if request.tail_events < 0 {
        Tail::All
    } else if request.tail_events > 0 {
        Tail::Events(usize::try_from(request.tail_events).unwrap_or(usize::MAX))
    } else if !request.tail_id.is_empty() {
        Tail::AfterId(request.tail_id.clone())
    } else if request.tail_seconds < 0 {
        return Err(Error::InvalidArgument {
            reason: "tail_seconds must not be negative".to_owned(),
        });
    } else if request.tail_seconds > 0 {
        Tail::Within(Duration::from_secs(
            request.tail_seconds.unsigned_abs().into(),
        ))
    } else {
        Tail::None
    })
}

/// The follower task: hello, backlog, live events; ends when the client leaves, the bus is
/// gone or machined shuts down.
async fn follow(
    hello: machine::Event,
    backlog: Vec<Event>,
    mut live: broadcast::Receiver<Event>,
    actor: Option<String>,
    mut closing: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<machine::Event, Status>>,
) {
    let wanted = |event: &Event| actor.is_none() || event.actor_id == actor;
    if tx.send(Ok(hello)).await.is_err() {
        return;
    }
    for event in backlog.iter().filter(|event| wanted(event)) {
        if tx.send(Ok(event.to_proto())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(event) => {
                    if wanted(&event) && tx.send(Ok(event.to_proto())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "An Events follower fell behind and skipped events");
                }
                Err(RecvError::Closed) => return,
            },
            () = tx.closed() => return,
            () = stopped(&mut closing) => {
                // What was published before the shutdown still goes out, then the stream ends.
                loop {
                    match live.try_recv() {
                        Ok(event) => {
                            if wanted(&event) && tx.send(Ok(event.to_proto())).await.is_err() {
                                return;
                            }
                        }
                        Err(TryRecvError::Lagged(_)) => {}
                        Err(TryRecvError::Empty | TryRecvError::Closed) => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;
    use crate::events::EventPayload;

    fn request(f: impl FnOnce(&mut machine::EventsRequest)) -> machine::EventsRequest {
        let mut request = machine::EventsRequest::default();
        f(&mut request);
        request
    }

    fn task(name: &str) -> EventPayload {
        EventPayload::Task(machine::TaskEvent {
            task: name.to_owned(),
            action: 0,
        })
    }

    fn name(event: &machine::Event) -> String {
        use prost::Message as _;
        let any = event.data.as_ref().expect("data");
        machine::TaskEvent::decode(any.value.as_slice())
            .expect("task")
            .task
    }

    #[test]
    fn tail_fields_are_mutually_exclusive() {
        assert_eq!(tail(&request(|_| {})).expect("none"), Tail::None);
        assert_eq!(
            tail(&request(|r| r.tail_events = -1)).expect("all"),
            Tail::All
        );
        assert_eq!(
            tail(&request(|r| r.tail_events = 3)).expect("3"),
            Tail::Events(3)
        );
        assert_eq!(
            tail(&request(|r| r.tail_id = "x".to_owned())).expect("id"),
            Tail::AfterId("x".to_owned())
        );
        assert_eq!(
            tail(&request(|r| r.tail_seconds = 60)).expect("secs"),
            Tail::Within(Duration::from_secs(60))
        );
        for both in [
            request(|r| {
                r.tail_events = 1;
                r.tail_seconds = 1;
            }),
            request(|r| {
                r.tail_events = -1;
                r.tail_id = "x".to_owned();
            }),
            request(|r| {
                r.tail_id = "x".to_owned();
                r.tail_seconds = 5;
            }),
        ] {
            let err = tail(&both).expect_err("exclusive");
            assert!(err.to_string().contains("mutually exclusive"), "{err}");
        }
        assert!(tail(&request(|r| r.tail_seconds = -5)).is_err());
    }

    #[tokio::test]
    async fn hello_then_backlog_then_live_filtered_by_actor() {
        let bus = EventBus::new();
        let (_closing_tx, closing) = watch::channel(false);
        bus.publish(task("old-a"), Some("a".to_owned()));
        bus.publish(task("old-b"), Some("b".to_owned()));
        let mut stream = stream(
            &bus,
            request(|r| {
                r.tail_events = -1;
                r.with_actor_id = "a".to_owned();
            }),
            closing,
        )
        .expect("stream");
        let hello = stream.next().await.expect("hello").expect("ok");
        assert!(hello.data.is_none());
        assert_eq!(hello.actor_id, "a");
        assert_eq!(hello.id.len(), 20);
        assert_eq!(
            name(&stream.next().await.expect("backlog").expect("ok")),
            "old-a"
        );
        bus.publish(task("new-b"), Some("b".to_owned()));
        bus.publish(task("new-a"), Some("a".to_owned()));
        let next = stream.next().await.expect("live").expect("ok");
        assert_eq!(name(&next), "new-a");
        assert_eq!(next.actor_id, "a");
    }

    #[tokio::test]
    async fn shutting_down_delivers_what_was_published_then_ends() {
        let bus = EventBus::new();
        let (closing_tx, closing) = watch::channel(false);
        let mut stream = stream(&bus, request(|_| {}), closing).expect("stream");
        stream.next().await.expect("hello").expect("ok");
        bus.publish(task("last"), None);
        closing_tx.send_replace(true);
        let mut names = Vec::new();
        while let Some(event) = stream.next().await {
            names.push(name(&event.expect("ok")));
        }
        assert_eq!(names, ["last"]);
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_skips_instead_of_buffering() {
        let bus = EventBus::with_capacity(4);
        let (_closing_tx, closing) = watch::channel(false);
        let mut stream = stream(&bus, request(|_| {}), closing).expect("stream");
        stream.next().await.expect("hello").expect("ok");
        // Far more than the bus and the buffer hold, while the client reads nothing.
        for i in 0..(EVENTS_BUFFER * 4) {
            bus.publish(task(&i.to_string()), None);
            tokio::task::yield_now().await;
        }
        bus.publish(task("final"), None);
        let mut received = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(500), stream.next()).await
        {
            let event = name(&event.expect("ok"));
            let done = event == "final";
            received.push(event);
            if done {
                break;
            }
        }
        assert_eq!(received.last().map(String::as_str), Some("final"));
        assert!(received.len() < EVENTS_BUFFER * 4, "{}", received.len());
    }
}
