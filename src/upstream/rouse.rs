//! The waker an upstream connection's state machine is polled with.
//!
//! The request's own task drives its upstream connection (`pool`). hyper's
//! connection hands the response head and the body's bytes to their receivers
//! through channels, and each hand-over wakes the receiver; the body's demand
//! for more wakes the connection back. Both sides are polled by the same task,
//! one right after the other, so those wake-ups would only make the scheduler
//! poll the whole task once more per request (the client connection, the
//! server connection, the proxy's futures) to do what one more round here does
//! in place. `Rouse::rounds` turns a wake-up that arrives while its holder is
//! polling into one more round, and passes any other (the socket becoming
//! readable, from the IO driver) to the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// One per connection; `Waker::from(Arc<Rouse>)` is the waker its state
/// machine is polled with.
#[derive(Default)]
pub struct Rouse {
    state: AtomicU8,
    /// The task that holds the connection now (it moves between tasks with
    /// the connection: registered on every `rounds`).
    task: AtomicWaker,
}

impl Rouse {
    const IDLE: u8 = 0;
    const POLLING: u8 = 1;
    const WOKEN: u8 = 2;
    /// Rounds per poll before the task is left to the scheduler (hyper yields
    /// by waking itself after a long run of work; that must not spin here).
    pub const ROUNDS: usize = 4;

    /// Calls `round` (with `own`, this `Rouse`'s waker, and a no-op waker for
    /// what only the round itself can complete) until it is ready or nothing
    /// woke `own` during the call, at most `ROUNDS` times.
    ///
    /// A wake-up that comes with a ready result is not passed on: it asks for
    /// progress that the next poll makes, and whoever took the result polls
    /// again when it wants more (a socket that became readable stays so until
    /// it is read).
    pub fn rounds<T>(
        &self,
        own: &Waker,
        cx: &mut Context<'_>,
        mut round: impl FnMut(&mut Context<'_>, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.task.register(cx.waker());
        let mut own = Context::from_waker(own);
        let mut quiet = Context::from_waker(Waker::noop());
        for _ in 0..Self::ROUNDS {
            self.state.store(Self::POLLING, Ordering::Release);
            let polled = round(&mut own, &mut quiet);
            let woken = self.state.swap(Self::IDLE, Ordering::AcqRel) == Self::WOKEN;
            if polled.is_ready() || !woken {
                return polled;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Lets go of the task registered last: until the next `rounds`, a
    /// wake-up reaches no one.
    pub fn forget(&self) {
        drop(self.task.take());
    }
}

impl Wake for Rouse {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self.state.compare_exchange(
            Self::POLLING,
            Self::WOKEN,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) | Err(Self::WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::WakeCount;

    fn setup() -> (Arc<Rouse>, Waker, Arc<WakeCount>, Waker) {
        let rouse = Arc::new(Rouse::default());
        let own = Waker::from(rouse.clone());
        let (count, task) = WakeCount::waker();
        (rouse, own, count, task)
    }

    #[test]
    fn a_wake_during_a_round_is_one_more_round_not_a_task_wake() {
        let (rouse, own, count, task) = setup();
        let mut cx = Context::from_waker(&task);
        let mut calls = 0;
        let polled: Poll<()> = rouse.rounds(&own, &mut cx, |own, _| {
            calls += 1;
            if calls == 1 {
                own.waker().wake_by_ref();
            }
            Poll::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(calls, 2);
        assert_eq!(count.get(), 0);
    }

    #[test]
    fn a_wake_after_the_rounds_wakes_the_task() {
        let (rouse, own, count, task) = setup();
        let mut cx = Context::from_waker(&task);
        let mut kept = None;
        let polled: Poll<()> = rouse.rounds(&own, &mut cx, |own, _| {
            kept = Some(own.waker().clone());
            Poll::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(count.get(), 0);
        kept.unwrap().wake();
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_round_that_always_wakes_itself_is_left_to_the_scheduler() {
        let (rouse, own, count, task) = setup();
        let mut cx = Context::from_waker(&task);
        let mut calls = 0;
        let polled: Poll<()> = rouse.rounds(&own, &mut cx, |own, _| {
            calls += 1;
            own.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(calls, Rouse::ROUNDS);
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_ready_round_returns_without_waking_anyone() {
        let (rouse, own, count, task) = setup();
        let mut cx = Context::from_waker(&task);
        let mut calls = 0;
        let polled = rouse.rounds(&own, &mut cx, |own, quiet| {
            calls += 1;
            own.waker().wake_by_ref();
            quiet.waker().wake_by_ref();
            Poll::Ready(7)
        });
        assert_eq!(polled, Poll::Ready(7));
        assert_eq!(calls, 1);
        assert_eq!(count.get(), 0);
        // The state is back to idle: a later wake reaches the task.
        own.wake_by_ref();
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_forgotten_task_is_not_woken() {
        let (rouse, own, count, task) = setup();
        let mut cx = Context::from_waker(&task);
        let _: Poll<()> = rouse.rounds(&own, &mut cx, |_, _| Poll::Pending);
        rouse.forget();
        own.wake_by_ref();
        assert_eq!(count.get(), 0);
    }

    #[test]
    fn the_task_that_polled_last_is_the_one_woken() {
        let (rouse, own, first, first_task) = setup();
        let (second, second_task) = WakeCount::waker();
        for task in [&first_task, &second_task] {
            let mut cx = Context::from_waker(task);
            let _: Poll<()> = rouse.rounds(&own, &mut cx, |_, _| Poll::Pending);
        }
        own.wake_by_ref();
        assert_eq!(first.get(), 0);
        assert_eq!(second.get(), 1);
    }
}
