//! Worker threads that accept and serve connections, each on a single-threaded tokio
//! runtime of its own.
//!
//! A connection stays on the worker that accepted it for its whole life: its socket,
//! timers and task live on that worker's runtime. A work-stealing runtime wakes idle
//! threads for each new task and may move a task between threads. That costs an eventfd
//! write, futex calls and cache misses per connection. Here a readiness event is handled
//! on the thread whose epoll reported it.
//!
//! Every worker accepts from its own duplicate of each listening socket, so the worker
//! that wakes first takes the next client. This spreads new clients towards the less
//! busy worker, and unlike SO_REUSEPORT it lets no other process join the listening
//! address.
//!
//! This module is not a scheduler. Connections never move between workers, so one
//! worker with many long bulk connections can be busy while another is idle.

use std::io;
use std::thread::{self, JoinHandle};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A set of running worker threads. Dropping it stops their runtimes, which drops
/// every task still on them, and joins the threads.
#[derive(Debug)]
pub struct Workers {
    workers: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Dropping this sender ends the thread's `block_on`.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` worker threads, named `styx-worker-N`.
    ///
    /// # Errors
    /// Returns the error of the first runtime or thread that fails to start; the
    /// workers started before it are stopped.
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Workers {
            workers: Vec::with_capacity(count),
        };
        for index in 0..count {
            workers.workers.push(Worker::start(index)?);
        }
        Ok(workers)
    }

    /// Returns the runtime handle of each worker.
    pub fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.workers.iter().map(|worker| &worker.handle)
    }

    /// Returns the number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Returns whether there are no workers.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

impl Worker {
    fn start(index: usize) -> io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();

        let thread = thread::Builder::new()
            .name(format!("styx-worker-{index}"))
            .spawn(move || {
                // The receiver resolves with an error when the sender is dropped.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Worker {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("A worker thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_worker_threads() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);

        let names: Vec<String> = workers
            .handles()
            .map(|handle| {
                let (sender, receiver) = std::sync::mpsc::channel();
                handle.spawn(async move {
                    let name = thread::current().name().unwrap_or_default().to_owned();
                    sender.send(name).unwrap();
                });
                receiver.recv().unwrap()
            })
            .collect();
        assert_eq!(names, ["styx-worker-0", "styx-worker-1"]);
    }

    #[test]
    fn drop_stops_pending_tasks() {
        let workers = Workers::start(1).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel::<()>();
        let handle = workers.handles().next().unwrap().clone();
        handle.spawn(async move {
            let _sender = sender;
            std::future::pending::<()>().await;
        });

        drop(workers);
        // The pending task was dropped with its runtime, and the sender with it.
        assert!(receiver.recv().is_err());
    }
}
