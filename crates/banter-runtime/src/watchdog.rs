//! A deadline for blocking calls into librdkafka whose own timeout is known not to hold.
//!
//! The librdkafka that rdkafka-sys 4.10 bundles (2.12.1) can block in
//! `rd_kafka_send_offsets_to_transaction` far past the timeout it is given when the group
//! coordinator goes down or leaves the cluster's metadata (librdkafka issues #5456 and #5511,
//! fixed on librdkafka's master in 2026 (9304729, e3710ac) but in no release an rdkafka-sys
//! bundles: the newest, 4.10, bundles 2.12.1). The soak saw a stream
//! instance stay there ten minutes after a broker was killed, its transaction long aborted by
//! the broker and its partitions' rows unwritten. A blocked C call cannot be cancelled; what a
//! role can do is notice it and act: the stream exits, so that a supervisor starts it again
//! and it redoes what it had not committed.
//!
//! A [`Watchdog`] owns one thread that sleeps until the deadline of the [`Guard`] armed last;
//! the guard disarms when dropped (the call returned). A call still running at its deadline
//! gets the watchdog's action, once.

use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What the watchdog does when a guarded call overruns: told what was called and the limit
/// it had.
pub type Action = Box<dyn Fn(&'static str, Duration) + Send + 'static>;

struct Armed {
    what: &'static str,
    limit: Duration,
    deadline: Instant,
    generation: u64,
}

#[derive(Default)]
struct State {
    armed: Option<Armed>,
    generation: u64,
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Watches one blocking call at a time (the calls of one thread).
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watching thread (named `name`); `action` runs on it when a guarded call is
    /// still running at its deadline.
    ///
    /// # Panics
    /// The thread cannot be spawned.
    pub fn new(name: &str, action: Action) -> Self {
        let shared = Arc::new(Shared::default());
        let watched = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || watch(&watched, &action))
            .unwrap_or_else(|e| panic!("cannot start the {name} thread: {e}"));
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// The action of a role that cannot go on past a stuck call: logs it, says it on stderr
    /// as the binary does for its other errors, and exits with status 2 so that a supervisor
    /// starts the role again (the whole process: under `banter run`, every role in it).
    #[must_use]
    pub fn exit_action(role: &'static str) -> Action {
        Box::new(move |what, limit| {
            let msg = format!(
                "the Kafka client call {what} is still blocked {}s after it was made, past its \
                 own timeout (librdkafka 2.12 can block so while a coordinator is down: \
                 librdkafka #5456, #5511); exiting so that a supervisor restarts this {role} \
                 (what it had not committed is redone)",
                limit.as_secs()
            );
            tracing::error!("{msg}");
            // Not eprintln!: a closed stderr must not panic this thread before the exit.
            let _ = writeln!(std::io::stderr(), "error: {msg}");
            std::process::exit(2);
        })
    }

    /// Arms the watchdog for a call named `what` that must return within `limit`; disarmed
    /// when the guard is dropped. Arming again replaces the earlier deadline.
    #[must_use = "the watchdog is disarmed when the guard is dropped"]
    pub fn guard(&self, what: &'static str, limit: Duration) -> Guard<'_> {
        let mut st = self.shared.lock();
        st.generation += 1;
        let generation = st.generation;
        st.armed = Some(Armed {
            what,
            limit,
            deadline: Instant::now() + limit,
            generation,
        });
        drop(st);
        self.shared.wake.notify_one();
        Guard {
            dog: self,
            generation,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An armed deadline; dropping it disarms the watchdog (unless a later guard replaced it).
pub struct Guard<'a> {
    dog: &'a Watchdog,
    generation: u64,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let mut st = self.dog.shared.lock();
        if st
            .armed
            .as_ref()
            .is_some_and(|a| a.generation == self.generation)
        {
            st.armed = None;
        }
    }
}

fn watch(shared: &Shared, action: &Action) {
    let mut st = shared.lock();
    loop {
        if st.stopped {
            return;
        }
        let Some(deadline) = st.armed.as_ref().map(|a| a.deadline) else {
            st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let now = Instant::now();
        if now < deadline {
            st = shared
                .wake
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        if let Some(a) = st.armed.take() {
            drop(st);
            action(a.what, a.limit);
            st = shared.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn reporting() -> (Watchdog, mpsc::Receiver<(&'static str, Duration)>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let dog = Watchdog::new(
            "test-watchdog",
            Box::new(move |what, limit| {
                let _ = tx.lock().unwrap().send((what, limit));
            }),
        );
        (dog, rx)
    }

    #[test]
    fn a_call_still_running_at_its_deadline_gets_the_action_once() {
        let (dog, rx) = reporting();
        let g = dog.guard("stuck_call", Duration::from_millis(50));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Ok(("stuck_call", Duration::from_millis(50)))
        );
        // Still armed by the same guard: not told again.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(g);
    }

    #[test]
    fn a_call_that_returns_in_time_disarms_it() {
        let (dog, rx) = reporting();
        for _ in 0..100 {
            let _g = dog.guard("quick_call", Duration::from_millis(300));
        }
        assert!(rx.recv_timeout(Duration::from_millis(600)).is_err());
        // The watchdog still watches after disarming.
        let _g = dog.guard("later_call", Duration::from_millis(10));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).map(|(w, _)| w),
            Ok("later_call")
        );
    }

    #[test]
    fn a_later_guard_replaces_the_earlier_deadline() {
        let (dog, rx) = reporting();
        let first = dog.guard("first", Duration::from_secs(3600));
        let second = dog.guard("second", Duration::from_millis(20));
        // Dropping the replaced guard does not disarm the later one.
        drop(first);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)).map(|(w, _)| w),
            Ok("second")
        );
        drop(second);
    }
}
