//! Liveness of a work loop: whether it is stuck, for `/healthz`. A process whose loop waits forever on a call
//! that never returns still answers its probes; only the loop can tell, by recording its progress, and only a
//! failing liveness probe makes kubelet restart it.
//!
//! The loop marks the span of a unit of work ([`Heartbeat::begin`], e.g. one reconcile pass) and records
//! progress inside it ([`Busy::progress`], e.g. each object done, or [`Heartbeat::progress`] from what the work
//! calls, e.g. each HTTP call that returned). The loop is stuck when a unit of work has gone longer than the
//! bound without progress; waiting for work is never stuck.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::time::Instant;

/// A work loop's record of progress, shared with the probe server (clones share it).
#[derive(Clone, Debug)]
pub struct Heartbeat {
    what: &'static str,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// How long a unit of work may go without progress.
    bound: Duration,
    /// Last progress (or start) of the unit of work under way; `None` while the loop waits for work.
    busy_since: Option<Instant>,
    /// The current stall was logged already (one log line per stall, not one per probe).
    reported: bool,
}

impl Heartbeat {
    /// The heartbeat of `what` (named in the probe's answer and the log), stuck after `bound` without
    /// progress.
    pub fn new(what: &'static str, bound: Duration) -> Self {
        Heartbeat {
            what,
            state: Arc::new(Mutex::new(State {
                bound,
                ..State::default()
            })),
        }
    }

    /// Changes the bound, for every clone (which may already be in the hands of the probe or of a client).
    pub fn set_bound(&self, bound: Duration) {
        self.state().bound = bound;
    }

    /// When the unit of work under way started or last made progress; `None` while the loop waits for work.
    pub fn last_progress(&self) -> Option<Instant> {
        self.state().busy_since
    }

    /// Records progress of the unit of work under way, if any (progress outside one is not work).
    pub fn progress(&self) {
        let mut state = self.state();
        if state.busy_since.is_some() {
            state.busy_since = Some(Instant::now());
            state.reported = false;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields: one a panicking holder left is still valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A unit of work starts: it must make progress (or end) within the bound. It ends when the guard drops.
    pub fn begin(&self) -> Busy {
        let mut state = self.state();
        state.busy_since = Some(Instant::now());
        state.reported = false;
        drop(state);
        Busy(self.clone())
    }

    /// `Ok` unless a unit of work has gone longer than the bound without progress; then the reason, which is
    /// also logged (once per stall).
    pub fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    /// [`Heartbeat::check`] as at `now` (tests look ahead instead of waiting).
    pub fn check_at(&self, now: Instant) -> Result<(), String> {
        let mut state = self.state();
        let Some(since) = state.busy_since else {
            return Ok(());
        };
        let quiet = now.saturating_duration_since(since);
        if quiet <= state.bound {
            return Ok(());
        }
        let reason = format!(
            "{} stuck: no progress for {}s (bound {}s)",
            self.what,
            quiet.as_secs(),
            state.bound.as_secs()
        );
        if !std::mem::replace(&mut state.reported, true) {
            tracing::error!(reason = %reason, "liveness check fails");
        }
        Err(reason)
    }
}

/// A unit of work under way (see [`Heartbeat::begin`]); dropping it ends the unit.
#[derive(Debug)]
pub struct Busy(Heartbeat);

impl Busy {
    /// The unit of work made progress: the bound starts again from now.
    pub fn progress(&self) {
        self.0.progress();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.busy_since = None;
        state.reported = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_work_without_progress_for_longer_than_the_bound_is_stuck() {
        let heartbeat = Heartbeat::new("work loop", Duration::from_secs(60));
        let later = |secs| Instant::now() + Duration::from_secs(secs);
        assert_eq!(
            heartbeat.check_at(later(3600)),
            Ok(()),
            "waiting for work is never stuck"
        );

        let busy = heartbeat.begin();
        assert_eq!(heartbeat.check_at(later(59)), Ok(()));
        assert_eq!(
            heartbeat.check_at(later(62)),
            Err("work loop stuck: no progress for 62s (bound 60s)".to_string())
        );
        busy.progress();
        assert_eq!(heartbeat.check(), Ok(()), "a stall that moves again is over");
        assert!(
            heartbeat.check_at(later(120)).is_err(),
            "progress restarts the bound"
        );
        // What the work calls reports progress through any clone, under way or not.
        let client_side = heartbeat.clone();
        assert!(heartbeat.check_at(later(61)).is_err());
        client_side.progress();
        assert_eq!(heartbeat.check_at(later(59)), Ok(()), "a call returned: progress");
        heartbeat.set_bound(Duration::from_secs(30));
        assert!(
            heartbeat.check_at(later(45)).is_err(),
            "a new bound holds for every clone"
        );
        drop(busy);
        assert_eq!(
            heartbeat.check_at(later(3600)),
            Ok(()),
            "finished work is not stuck"
        );
        client_side.progress();
        assert_eq!(
            heartbeat.check_at(later(3600)),
            Ok(()),
            "progress outside a unit of work starts none"
        );
    }
}
