//! The pool's resident job: a loop that lives on one of the pool's workers and runs the
//! closures that [`crate::Cpu::run`] receives from threads outside the pool.
//!
//! `ThreadPool::install` called from outside a pool queues the closure on rayon's
//! injector, which allocates a block of slots every 63 jobs, so a training step driven
//! from the caller's thread would allocate now and then. Handed to a worker that is
//! already inside the pool, the same closure runs allocation-free: parallel iterators
//! started on a worker queue their halves on that worker's own deque, and the other
//! workers steal from it. The caller sleeps until its closure has run; a panic inside
//! the closure is resumed on the caller's thread. Between closures the resident yields
//! for a while before it sleeps, as rayon's idle workers do, since a step's ops follow
//! each other closely and waking a sleeping thread costs more than the op on small
//! models.

use core::mem;
use core::sync::atomic::{AtomicBool, Ordering};
use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Rounds of `yield_now` the resident waits for the next closure before sleeping.
const SPINS: usize = 64;

/// A caller's `FnMut()`, borrowed, with its type erased so that it fits the shared slot.
struct Erased {
    data: *mut (),
    call: unsafe fn(*mut ()),
}

// SAFETY: an `Erased` is only made (in `Resident::run`) from a `&mut F` with `F: Send`,
// and its maker holds that borrow and waits until the resident has finished calling it:
// the closure is used by one thread at a time and outlives every use.
unsafe impl Send for Erased {}

/// What the resident is doing.
enum Slot {
    /// Waiting for work.
    Idle,
    /// A caller's closure waits to be run.
    Pending(Erased),
    /// Running a closure.
    Running,
    /// The closure has returned (`None`) or panicked (its payload); its caller collects.
    Finished(Option<Box<dyn Any + Send>>),
    /// The backend is being dropped: the loop ends.
    Closed,
}

struct Shared {
    slot: Mutex<Slot>,
    changed: Condvar,
    /// Set while a closure is pending, so the resident can watch for one without the
    /// lock.
    pending: AtomicBool,
}

impl Shared {
    /// The slot (nothing panics while holding it, so poisoning cannot leave it
    /// inconsistent).
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Slot>) -> MutexGuard<'a, Slot> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handle to the resident loop; dropping it ends the loop.
pub(crate) struct Resident {
    shared: Arc<Shared>,
}

impl Resident {
    /// Starts the loop on one of `pool`'s workers.
    pub(crate) fn start(pool: &rayon::ThreadPool) -> Self {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::Idle),
            changed: Condvar::new(),
            pending: AtomicBool::new(false),
        });
        let on_worker = Arc::clone(&shared);
        pool.spawn(move || serve(&on_worker));
        Resident { shared }
    }

    /// Runs `f` on the resident's worker and waits until it has returned. Callers from
    /// several threads take turns.
    pub(crate) fn run<F: FnMut() + Send>(&self, f: &mut F) {
        /// # Safety
        /// `data` must come from a live `&mut F` that nothing else uses meanwhile.
        unsafe fn call<F: FnMut()>(data: *mut ()) {
            // SAFETY: guaranteed by the caller.
            unsafe { (*data.cast::<F>())() }
        }
        let shared = &*self.shared;
        let mut slot = shared.lock();
        while !matches!(*slot, Slot::Idle) {
            slot = shared.wait(slot);
        }
        let job = Erased {
            data: (f as *mut F).cast(),
            call: call::<F>,
        };
        *slot = Slot::Pending(job);
        shared.pending.store(true, Ordering::Release);
        shared.changed.notify_all();
        let outcome = loop {
            if let Slot::Finished(_) = *slot {
                match mem::replace(&mut *slot, Slot::Idle) {
                    Slot::Finished(outcome) => break outcome,
                    _ => unreachable!("the slot was just seen finished"),
                }
            }
            slot = shared.wait(slot);
        };
        // Another caller may be waiting for the slot to become idle.
        shared.changed.notify_all();
        drop(slot);
        if let Some(payload) = outcome {
            panic::resume_unwind(payload);
        }
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        *self.shared.lock() = Slot::Closed;
        self.shared.changed.notify_all();
    }
}

/// The resident loop: runs pending closures until the slot is closed.
fn serve(shared: &Shared) {
    loop {
        for _ in 0..SPINS {
            if shared.pending.load(Ordering::Acquire) {
                break;
            }
            std::thread::yield_now();
        }
        let mut slot = shared.lock();
        let job = loop {
            match mem::replace(&mut *slot, Slot::Running) {
                Slot::Pending(job) => break job,
                Slot::Closed => return,
                other => {
                    *slot = other;
                    slot = shared.wait(slot);
                }
            }
        };
        shared.pending.store(false, Ordering::Relaxed);
        drop(slot);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: see `Erased`: the caller waits, holding the closure's borrow.
            unsafe { (job.call)(job.data) }
        }));
        *shared.lock() = Slot::Finished(outcome.err());
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use crate::Cpu;
    use std::panic::{AssertUnwindSafe, catch_unwind};

    #[test]
    fn runs_closures_in_the_pool_for_several_callers_and_resumes_panics() {
        for threads in [1, 3] {
            let cpu = Cpu::with_threads(threads);
            assert!(cpu.run(|| rayon::current_thread_index().is_some()));
            let panicked = catch_unwind(AssertUnwindSafe(|| cpu.run(|| panic!("inside"))));
            assert!(panicked.is_err());
            std::thread::scope(|s| {
                for t in 0..4 {
                    let cpu = &cpu;
                    s.spawn(move || {
                        for i in 0..200 {
                            assert_eq!(cpu.run(|| t * 1000 + i), t * 1000 + i);
                        }
                    });
                }
            });
        }
    }
}
