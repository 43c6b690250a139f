//! What happened to a pod, as a stream: every event since the pod was
//! made (a bounded log), then the new ones as they happen.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::stream::BoxStream;
use tokio::sync::watch;

/// One thing that happened to a pod; see [`Pod::events`](crate::Pod::events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it happened.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

/// Which probe of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// Restarts the member when it fails.
    Liveness,
    /// Decides whether the member (and so the pod) is Ready.
    Readiness,
    /// Gates the other two until the member has started.
    Startup,
}

/// Why podnet ended a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KillReason {
    /// Its liveness probe failed `failure_threshold` times in a row.
    Liveness,
    /// Its startup probe failed `failure_threshold` times in a row.
    Startup,
    /// [`Pod::stop_member`](crate::Pod::stop_member), [`Pod::stop`](crate::Pod::stop)
    /// or [`Pod::remove`](crate::Pod::remove) asked for it.
    Stopped,
    /// The holder died: the pod has Failed and its members are ended.
    HolderDied,
}

/// What an [`Event`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The pod entered this phase.
    Phase(crate::Phase),
    /// A member's process started (`restarts` earlier runs before this one).
    Started {
        /// The member.
        member: String,
        /// Its process.
        pid: u32,
        /// How many times it was restarted before this run.
        restarts: u32,
    },
    /// A member's process could not be started (counted as exit status 127).
    FailedToStart {
        /// The member.
        member: String,
        /// Why, with the program's name.
        error: String,
    },
    /// podnet is ending a member (SIGTERM, then SIGKILL after the grace period).
    Killing {
        /// The member.
        member: String,
        /// Why.
        reason: KillReason,
    },
    /// A member's process ended.
    Exited {
        /// The member.
        member: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// A member will be restarted after this back-off.
    BackOff {
        /// The member.
        member: String,
        /// How long until the restart.
        delay: Duration,
    },
    /// A probe's verdict changed: it passes now, or it has failed
    /// `failure_threshold` times in a row.
    Probe {
        /// The member.
        member: String,
        /// Which probe.
        probe: ProbeKind,
        /// Whether it passes.
        passing: bool,
        /// The last result, e.g. `HTTP 503` or `connect: Connection refused`.
        detail: String,
    },
    /// The pod's Ready condition changed: every running member passes its
    /// readiness probe (or has none), or not.
    Ready(bool),
    /// The holder process died: the pod has Failed.
    HolderDied {
        /// How it ended.
        status: String,
    },
}

/// How many past events a pod keeps for late subscribers.
const KEEP: usize = 4096;

#[derive(Debug)]
struct Log {
    events: VecDeque<Event>,
    /// Sequence number of `events[0]`.
    first: u64,
    closed: bool,
}

/// The pod's event log: appended by the supervisor, read by streams.
#[derive(Debug)]
pub(crate) struct Events {
    log: Mutex<Log>,
    /// The sequence number after the last event; bumped on close too.
    end: watch::Sender<u64>,
}

impl Events {
    pub(crate) fn new() -> Arc<Events> {
        Arc::new(Events {
            log: Mutex::new(Log {
                events: VecDeque::new(),
                first: 0,
                closed: false,
            }),
            end: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, kind: EventKind) {
        let mut log = self.lock();
        if log.closed {
            return;
        }
        if log.events.len() == KEEP {
            log.events.pop_front();
            log.first += 1;
        }
        log.events.push_back(Event {
            at: SystemTime::now(),
            kind,
        });
        let end = log.first + log.events.len() as u64;
        drop(log);
        self.end.send_replace(end);
    }

    /// No more events: streams end once they have read the log.
    pub(crate) fn close(&self) {
        let mut log = self.lock();
        log.closed = true;
        drop(log);
        self.end.send_modify(|_| {});
    }

    /// Every event from the oldest kept one on, then live ones, until the
    /// log is closed.
    pub(crate) fn stream(self: &Arc<Self>) -> BoxStream<'static, Event> {
        let rx = self.end.subscribe();
        Box::pin(futures::stream::unfold(
            (self.clone(), rx, 0u64),
            |(events, mut rx, mut next)| async move {
                loop {
                    {
                        let log = events.lock();
                        // Events older than the log were dropped: skip them.
                        next = next.max(log.first);
                        let index = usize::try_from(next - log.first).unwrap_or(usize::MAX);
                        if let Some(event) = log.events.get(index) {
                            let event = event.clone();
                            drop(log);
                            return Some((event, (events, rx, next + 1)));
                        }
                        if log.closed {
                            return None;
                        }
                        rx.mark_unchanged();
                    }
                    // The sender lives in `events`, so this only wakes on news.
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        ))
    }
}
