//! Thread per core: the relay's connections are spread over worker threads,
//! each running a single-threaded tokio runtime.
//!
//! An agent's connection (its TLS WebSocket session, every stream in it and
//! every backend connection those streams make) lives on one worker from
//! accept to close, so the tasks of a session wake each other on the same
//! thread instead of across a work-stealing pool. Measured against tokio's
//! multi-threaded runtime (BENCHMARKS.md): tunnel CPU per request at 32
//! connections 20.6–21.2 → 15.4–19.8 µs, per new connection 194–230 →
//! 169–183 µs. Sessions are many and independent, so spreading them round
//! robin keeps every core busy.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The worker threads. Dropping this stops them: tasks still running on
/// them are cancelled, and the threads are joined.
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n` workers (at least one).
    pub fn start(n: usize) -> io::Result<Self> {
        let n = n.max(1);
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
        };
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(rt.handle().clone());
            workers.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("relay-worker-{i}"))
                .spawn(move || {
                    // Runs spawned tasks until told to stop (or the pool is
                    // dropped); dropping the runtime cancels what is left.
                    let _ = rt.block_on(stopped);
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker, round robin.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The default number of workers: one per CPU the process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tasks_spread_over_every_worker_and_stop_with_the_pool() {
        let workers = Workers::start(3).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let names: HashSet<String> = rt.block_on(async {
            let mut names = HashSet::new();
            for _ in 0..6 {
                let name = workers
                    .spawn(async {
                        // A worker has a reactor and timers of its own.
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        std::thread::current().name().unwrap_or("").to_string()
                    })
                    .await
                    .unwrap();
                names.insert(name);
            }
            names
        });
        assert_eq!(names.len(), 3, "{names:?}");

        // A task still running when the pool goes is cancelled, not leaked.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
