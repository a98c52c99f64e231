//! The node's event bus: every runtime event (service state changes, sequences, phases, tasks,
//! machine status, …) is published here once and read by the `Events` RPC.
//!
//! The bus keeps the last [`DEFAULT_CAPACITY`] events in a ring (for `tail_events`, `tail_id`
//! and `tail_seconds`) and fans new ones out to followers over a `tokio::sync::broadcast`
//! channel. Publishing and subscribing take the same lock, so [`EventBus::subscribe`] hands
//! back a backlog and a receiver that together see every event exactly once: nothing published
//! between the snapshot and the subscription is lost or repeated.
//!
//! A follower that falls more than the channel's capacity behind gets
//! `RecvError::Lagged(n)` from the receiver instead of unbounded buffering; the reader decides
//! how to tell its client.
//!
//! Event ids are xids (20 characters of base32hex over 4 bytes of seconds since the epoch,
//! 3 bytes of machine id, 2 bytes of process id and a 3-byte counter), as Talos's, so they
//! sort by time and `tail_id` values from Talos tooling look familiar.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use basalt_api::machine;
use prost::Message as _;
use tokio::sync::broadcast;

/// How many past events the bus keeps by default.
pub const DEFAULT_CAPACITY: usize = 1000;

/// Prefix of every event payload's `Any.type_url`: Talos's, not `type.googleapis.com/`.
pub const TYPE_URL_PREFIX: &str = "talos/runtime/";

/// The payload of one event: one of the machine proto's event messages. Talos clients decode
/// exactly these and skip any other type.
#[derive(Clone, Debug, PartialEq)]
pub enum EventPayload {
    /// `machine.AddressEvent`: the node's hostname and addresses.
    Address(machine::AddressEvent),
    /// `machine.ConfigLoadErrorEvent`.
    ConfigLoadError(machine::ConfigLoadErrorEvent),
    /// `machine.ConfigValidationErrorEvent`.
    ConfigValidationError(machine::ConfigValidationErrorEvent),
    /// `machine.MachineStatusEvent`: stage and readiness.
    MachineStatus(machine::MachineStatusEvent),
    /// `machine.PhaseEvent`: a phase of a sequence started or stopped.
    Phase(machine::PhaseEvent),
    /// `machine.RestartEvent`.
    Restart(machine::RestartEvent),
    /// `machine.SequenceEvent`: a sequence (boot, reboot, shutdown, reset, …) started or ended.
    Sequence(machine::SequenceEvent),
    /// `machine.ServiceStateEvent`: a service changed state or health.
    ServiceState(machine::ServiceStateEvent),
    /// `machine.TaskEvent`: a task of a phase started or stopped.
    Task(machine::TaskEvent),
}

impl EventPayload {
    /// The payload's full proto name, e.g. `machine.ServiceStateEvent`.
    pub fn proto_name(&self) -> &'static str {
        match self {
            EventPayload::Address(_) => "machine.AddressEvent",
            EventPayload::ConfigLoadError(_) => "machine.ConfigLoadErrorEvent",
            EventPayload::ConfigValidationError(_) => "machine.ConfigValidationErrorEvent",
            EventPayload::MachineStatus(_) => "machine.MachineStatusEvent",
            EventPayload::Phase(_) => "machine.PhaseEvent",
            EventPayload::Restart(_) => "machine.RestartEvent",
            EventPayload::Sequence(_) => "machine.SequenceEvent",
            EventPayload::ServiceState(_) => "machine.ServiceStateEvent",
            EventPayload::Task(_) => "machine.TaskEvent",
        }
    }

    /// `talos/runtime/<full proto name>`.
    pub fn type_url(&self) -> String {
        format!("{TYPE_URL_PREFIX}{}", self.proto_name())
    }

    /// The payload packed as Talos packs it: `Any { type_url: "talos/runtime/machine.<Name>",
    /// value: <encoded message> }`.
    pub fn to_any(&self) -> prost_types::Any {
        let value = match self {
            EventPayload::Address(m) => m.encode_to_vec(),
            EventPayload::ConfigLoadError(m) => m.encode_to_vec(),
            EventPayload::ConfigValidationError(m) => m.encode_to_vec(),
            EventPayload::MachineStatus(m) => m.encode_to_vec(),
            EventPayload::Phase(m) => m.encode_to_vec(),
            EventPayload::Restart(m) => m.encode_to_vec(),
            EventPayload::Sequence(m) => m.encode_to_vec(),
            EventPayload::ServiceState(m) => m.encode_to_vec(),
            EventPayload::Task(m) => m.encode_to_vec(),
        };
        prost_types::Any {
            type_url: self.type_url(),
            value,
        }
    }
}

/// One published event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// A 20-character xid, unique, sortable by time.
    pub id: String,
    /// When it was published.
    pub time: SystemTime,
    /// The actor (e.g. a reboot's `actor_id`) that caused it, if any.
    pub actor_id: Option<String>,
    /// What happened.
    pub payload: EventPayload,
}

impl Event {
    /// The wire form, with `metadata` unset (apid fills it in when fanning out).
    pub fn to_proto(&self) -> machine::Event {
        machine::Event {
            metadata: None,
            data: Some(self.payload.to_any()),
            id: self.id.clone(),
            actor_id: self.actor_id.clone().unwrap_or_default(),
        }
    }
}

/// Which past events a reader wants first (`EventsRequest`'s mutually exclusive tail fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Every event still in the ring (`tail_events < 0`).
    All,
    /// None: only new events (`tail_events == 0` and no other tail field).
    None,
    /// The last `n` events (`tail_events > 0`).
    Events(usize),
    /// The events after the one with this id (`tail_id`). An id no longer (or never) in the
    /// ring selects the whole ring, so a reconnecting follower misses as little as possible.
    AfterId(String),
    /// The events published in the last this-long (`tail_seconds`).
    Within(Duration),
}

impl Tail {
    /// The selected suffix of `events` (oldest first), judged at `now`.
    pub fn select<'a>(&self, events: &'a [Event], now: SystemTime) -> &'a [Event] {
        let start = match self {
            Tail::All => 0,
            Tail::None => events.len(),
            Tail::Events(n) => events.len().saturating_sub(*n),
            Tail::AfterId(id) => events
                .iter()
                .rposition(|event| event.id == *id)
                .map_or(0, |at| at + 1),
            Tail::Within(window) => {
                let since = now.checked_sub(*window).unwrap_or(UNIX_EPOCH);
                events.partition_point(|event| event.time < since)
            }
        };
        &events[start..]
    }
}

/// The node's event bus; cheap to clone (all clones share one ring and channel).
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    ring: VecDeque<Event>,
    capacity: usize,
    sender: broadcast::Sender<Event>,
}

impl EventBus {
    /// A bus keeping the last [`DEFAULT_CAPACITY`] events.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus keeping the last `capacity` events (at least one); followers may fall at most
    /// `capacity` events behind before they lag.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (sender, _) = broadcast::channel(capacity);
        EventBus {
            inner: Arc::new(Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity),
                capacity,
                sender,
            })),
        }
    }

    /// Publishes an event: gives it a fresh id and the current time, stores it in the ring
    /// (dropping the oldest when full) and sends it to every follower. Returns the event.
    pub fn publish(&self, payload: EventPayload, actor_id: Option<String>) -> Event {
        let mut inner = self.lock();
        // Id and time are taken under the lock so ring order, id order and time order agree.
        let event = Event {
            id: next_xid(),
            time: SystemTime::now(),
            actor_id,
            payload,
        };
        if inner.ring.len() == inner.capacity {
            inner.ring.pop_front();
        }
        inner.ring.push_back(event.clone());
        // An error only means nobody follows right now.
        let _ = inner.sender.send(event.clone());
        event
    }

    /// The events still in the ring, oldest first.
    pub fn snapshot(&self) -> Vec<Event> {
        self.lock().ring.iter().cloned().collect()
    }

    /// The past events `tail` selects, oldest first.
    pub fn tail(&self, tail: &Tail) -> Vec<Event> {
        let inner = self.lock();
        let ring = inner.ring.iter().cloned().collect::<Vec<_>>();
        drop(inner);
        tail.select(&ring, SystemTime::now()).to_vec()
    }

    /// The whole ring (oldest first) plus a receiver of every later event: no gap, no
    /// duplicate between the two.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let inner = self.lock();
        let backlog = inner.ring.iter().cloned().collect();
        (backlog, inner.sender.subscribe())
    }

    /// Like [`EventBus::subscribe`], with the backlog narrowed to what `tail` selects.
    pub fn subscribe_with(&self, tail: &Tail) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let (ring, receiver) = self.subscribe();
        let backlog = tail.select(&ring, SystemTime::now()).to_vec();
        (backlog, receiver)
    }

    /// A fresh xid, e.g. for the empty "hello" event the `Events` RPC sends first.
    pub fn new_id(&self) -> String {
        next_xid()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the ring inconsistent (push and pop
        // are single operations), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("EventBus")
            .field("len", &inner.ring.len())
            .field("capacity", &inner.capacity)
            .field("followers", &inner.sender.receiver_count())
            .finish()
    }
}

// === xid ===

/// xid's alphabet: base32hex, lower case.
const XID_ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

/// The counter part of xids; starts at a random value as xid's does.
fn xid_counter() -> &'static AtomicU32 {
    static COUNTER: OnceLock<AtomicU32> = OnceLock::new();
    COUNTER.get_or_init(|| AtomicU32::new(random_u32()))
}

/// 3 bytes identifying this machine: derived from the hostname, as xid does (plus randomness
/// when the hostname cannot be read).
fn machine_id() -> [u8; 3] {
    static ID: OnceLock<[u8; 3]> = OnceLock::new();
    *ID.get_or_init(|| {
        let seed = match basalt_sys::hostname() {
            Ok(name) => {
                let mut hasher = std::hash::DefaultHasher::new();
                hasher.write(name.as_bytes());
                // DefaultHasher::new() is unkeyed, so the id is stable for a hostname.
                hasher.finish() as u32
            }
            Err(_) => random_u32(),
        };
        let [_, a, b, c] = seed.to_be_bytes();
        [a, b, c]
    })
}

/// Randomness without a dependency: std's per-process random hasher keys.
fn random_u32() -> u32 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() as u32
}

/// A new xid for now.
fn next_xid() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let counter = xid_counter().fetch_add(1, Ordering::Relaxed);
    xid(
        secs as u32,
        machine_id(),
        std::process::id() as u16,
        counter,
    )
}

/// Encodes xid's 12 raw bytes as 20 base32hex characters (the last character uses 4 bits).
fn xid(secs: u32, machine: [u8; 3], pid: u16, counter: u32) -> String {
    let mut raw = [0u8; 12];
    raw[..4].copy_from_slice(&secs.to_be_bytes());
    raw[4..7].copy_from_slice(&machine);
    raw[7..9].copy_from_slice(&pid.to_be_bytes());
    raw[9..].copy_from_slice(&counter.to_be_bytes()[1..]);
    // 96 bits read as a big-endian integer, shifted left 4 bits to fill 20 five-bit groups.
    let mut bits = u128::from_be_bytes({
        let mut wide = [0u8; 16];
        wide[4..].copy_from_slice(&raw);
        wide
    }) << 4;
    let mut out = [0u8; 20];
    for slot in out.iter_mut().rev() {
        *slot = XID_ALPHABET[(bits & 0x1f) as usize];
        bits >>= 5;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str) -> EventPayload {
        EventPayload::Task(machine::TaskEvent {
            task: name.to_owned(),
            action: machine::task_event::Action::Start as i32,
        })
    }

    fn task_name(event: &Event) -> &str {
        match &event.payload {
            EventPayload::Task(task) => &task.task,
            other => panic!("unexpected payload {other:?}"),
        }
    }

    fn names(events: &[Event]) -> Vec<&str> {
        events.iter().map(task_name).collect()
    }

    #[test]
    fn xid_matches_the_reference_encoding() {
        // From github.com/rs/xid's tests: bytes 4d88e15b60f486e428412dc9 encode as
        // 9m4e2mr0ui3e8a215n4g.
        let id = xid(0x4d88_e15b, [0x60, 0xf4, 0x86], 0xe428, 0x0041_2dc9);
        assert_eq!(id, "9m4e2mr0ui3e8a215n4g");
    }

    #[test]
    fn ids_are_unique_xids_and_sort_in_publish_order() {
        let bus = EventBus::new();
        let ids: Vec<String> = (0..50)
            .map(|i| bus.publish(task(&i.to_string()), None).id)
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 20, "{id}");
            assert!(id.bytes().all(|b| XID_ALPHABET.contains(&b)), "{id}");
        }
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        // Within one second and one process the counter orders them (barring a wrap of the
        // 24-bit counter, which the random start makes possible but rare).
        let events = bus.snapshot();
        assert_eq!(names(&events)[..3], ["0", "1", "2"]);
        assert!(events.windows(2).all(|w| w[0].time <= w[1].time));
    }

    #[test]
    fn the_ring_keeps_only_the_newest_events() {
        let bus = EventBus::with_capacity(3);
        for name in ["a", "b", "c", "d", "e"] {
            bus.publish(task(name), None);
        }
        assert_eq!(names(&bus.snapshot()), ["c", "d", "e"]);
    }

    #[test]
    fn tail_selects_by_count_id_and_age() {
        let bus = EventBus::new();
        let a = bus.publish(task("a"), Some("actor-1".to_owned()));
        let b = bus.publish(task("b"), None);
        bus.publish(task("c"), None);

        assert_eq!(names(&bus.tail(&Tail::All)), ["a", "b", "c"]);
        assert!(bus.tail(&Tail::None).is_empty());
        assert_eq!(names(&bus.tail(&Tail::Events(2))), ["b", "c"]);
        assert_eq!(names(&bus.tail(&Tail::Events(10))), ["a", "b", "c"]);
        assert_eq!(names(&bus.tail(&Tail::AfterId(a.id.clone()))), ["b", "c"]);
        assert_eq!(names(&bus.tail(&Tail::AfterId(b.id))), ["c"]);
        assert_eq!(
            names(&bus.tail(&Tail::AfterId("unknown".to_owned()))),
            ["a", "b", "c"]
        );
        assert_eq!(
            names(&bus.tail(&Tail::Within(Duration::from_secs(60)))).len(),
            3
        );
        assert_eq!(bus.snapshot()[0].actor_id.as_deref(), Some("actor-1"));

        // Age is judged against the given clock.
        let ring = bus.snapshot();
        let later = a.time + Duration::from_secs(120);
        assert!(
            Tail::Within(Duration::from_secs(60))
                .select(&ring, later)
                .is_empty()
        );
    }

    #[test]
    fn subscribers_see_every_event_once() {
        let bus = EventBus::new();
        bus.publish(task("before-1"), None);
        bus.publish(task("before-2"), None);
        let (backlog, mut receiver) = bus.subscribe();
        bus.publish(task("after"), None);
        assert_eq!(names(&backlog), ["before-1", "before-2"]);
        assert_eq!(
            task_name(&receiver.try_recv().expect("live event")),
            "after"
        );
        assert!(receiver.try_recv().is_err());

        let (backlog, _receiver) = bus.subscribe_with(&Tail::Events(1));
        assert_eq!(names(&backlog), ["after"]);
    }

    #[test]
    fn subscribing_while_publishing_leaves_no_gap_and_no_duplicate() {
        let bus = EventBus::with_capacity(100_000);
        let publisher = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    bus.publish(task(&i.to_string()), None);
                }
            })
        };
        // Subscribe somewhere in the middle of the stream.
        while bus.snapshot().len() < 100 {
            std::thread::yield_now();
        }
        let (backlog, mut receiver) = bus.subscribe();
        publisher.join().expect("publisher");
        let mut seen: Vec<u32> = backlog
            .iter()
            .map(|e| task_name(e).parse().expect("number"))
            .collect();
        while let Ok(event) = receiver.try_recv() {
            seen.push(task_name(&event).parse().expect("number"));
        }
        let expected: Vec<u32> = (0..20_000).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_slow_follower_lags_instead_of_buffering_without_bound() {
        let bus = EventBus::with_capacity(4);
        let (_, mut receiver) = bus.subscribe();
        for i in 0..10 {
            bus.publish(task(&i.to_string()), None);
        }
        assert!(matches!(
            receiver.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
        assert_eq!(task_name(&receiver.try_recv().expect("next")), "6");
    }

    #[test]
    fn payloads_use_talos_type_urls() {
        let payload = EventPayload::ServiceState(machine::ServiceStateEvent {
            service: "apid".to_owned(),
            action: machine::service_state_event::Action::Running as i32,
            message: "Started".to_owned(),
            health: None,
        });
        let any = payload.to_any();
        assert_eq!(any.type_url, "talos/runtime/machine.ServiceStateEvent");
        let decoded =
            machine::ServiceStateEvent::decode(any.value.as_slice()).expect("decodes back");
        assert_eq!(decoded.service, "apid");
        assert_eq!(task("x").type_url(), "talos/runtime/machine.TaskEvent");

        let bus = EventBus::new();
        let wire = bus.publish(payload, Some("actor".to_owned())).to_proto();
        assert_eq!(wire.id.len(), 20);
        assert_eq!(wire.actor_id, "actor");
        assert!(wire.metadata.is_none());
        let wire = bus.publish(task("y"), None).to_proto();
        assert_eq!(wire.actor_id, "");
    }
}
