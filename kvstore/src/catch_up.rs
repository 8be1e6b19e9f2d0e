//! The catch-up worker: one thread, at the idle scheduling priority, that runs the history
//! walks of watchers far behind the newest revision, one step at a time and in arrival order
//! (as etcd syncs its unsynced watchers from one loop). However many watchers start far back,
//! they cost half a core at most (the worker rests as long as it works), yield it to the threads
//! that serve and apply writes, and each step holds the keyspace only briefly.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the worker; the thread ends when every handle is dropped.
pub struct CatchUp {
    jobs: mpsc::Sender<Job>,
}

impl CatchUp {
    /// Starts the worker thread.
    #[allow(unsafe_code)] // sched_setscheduler(2): std has no call for it
    pub fn start() -> std::io::Result<CatchUp> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("watch-catch-up".into())
            .spawn(move || {
                // SCHED_IDLE for this thread only (pid 0: the calling thread): any thread that
                // serves or applies a write preempts it at once, and it still progresses (with
                // the smallest share) on a machine that is never idle.
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: a plain system call on the calling thread with a valid parameter.
                let lowered = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
                if lowered != 0 {
                    tracing::debug!("watch catch-up thread runs at normal priority");
                }
                for job in rx {
                    let started = std::time::Instant::now();
                    job();
                    // Half a core at most, busy or not: it rests as long as it worked.
                    std::thread::sleep(started.elapsed());
                }
            })?;
        Ok(CatchUp { jobs })
    }

    /// Runs `f` on the worker and returns its result; `None` if the worker is gone.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_in_order_off_the_runtime() {
        let w = CatchUp::start().expect("thread");
        let here = std::thread::current().id();
        let there = w.run(move || std::thread::current().id()).await;
        assert!(there.is_some_and(|id| id != here));
        let order: Vec<_> = futures::future::join_all((0..10).map(|i| w.run(move || i))).await;
        assert_eq!(order, (0..10).map(Some).collect::<Vec<_>>());
    }
}
