//! SendMessage off the connection's reader when a publish waits: with
//! `--data-dir` and `--fsync always|batch` a publish is answered only once
//! the journal has stored it, and with `--cluster` only once Redis has
//! answered. Run on `h2-read-N`, such a wait held up every other call of
//! the connection behind it (head-of-line blocking), and a group commit
//! could take at most one message per connection. So these calls go to
//! `grpc-publish-N` threads (`--publish-threads`) that publish, wait and
//! queue the answer on the connection; the reader goes on reading.
//! Without a wait (memory only, `--fsync never`) the reader answers itself:
//! a hand-over would cost more than the publish.

use crossbeam_channel::{Sender, TrySendError};

use crate::error::Error;

/// Calls waiting for a thread, at most; beyond that SendMessage is
/// answered RESOURCE_EXHAUSTED (the disk or Redis is far behind).
const QUEUE_PER_THREAD: usize = 64;

/// A publish and its answer, run on a publishing thread.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// The publishing threads; they end when this is dropped (with the
/// server's shared state) and their queue is empty.
pub(super) struct Publishers {
    jobs: Sender<Job>,
}

impl Publishers {
    pub(super) fn start(threads: usize) -> Result<Publishers, Error> {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(threads * QUEUE_PER_THREAD);
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("grpc-publish-{n}"))
                .stack_size(128 * 1024)
                .spawn(move || {
                    for job in queue {
                        job();
                    }
                })?;
        }
        Ok(Publishers { jobs })
    }

    /// Queues `job`; gives it back when the queue is full.
    pub(super) fn offer(&self, job: Job) -> Result<(), Job> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_the_threads_and_a_full_queue_gives_the_job_back() {
        let publishers = Publishers::start(1).unwrap();
        let (hold, held) = crossbeam_channel::bounded::<()>(0);
        let (done, finished) = crossbeam_channel::unbounded();
        // The one thread is held by this job until the test lets it go.
        let name = done.clone();
        publishers
            .offer(Box::new(move || {
                let _ = name.send(std::thread::current().name().map(String::from));
                let _ = held.recv();
            }))
            .map_err(|_| ())
            .unwrap();
        let ran_on = finished.recv().unwrap();
        assert_eq!(ran_on.as_deref(), Some("grpc-publish-0"));
        for _ in 0..QUEUE_PER_THREAD {
            let done = done.clone();
            let queued = publishers.offer(Box::new(move || {
                let _ = done.send(None);
            }));
            assert!(queued.is_ok());
        }
        assert!(publishers.offer(Box::new(|| {})).is_err(), "full");
        drop(hold);
        for _ in 0..QUEUE_PER_THREAD {
            assert_eq!(finished.recv().unwrap(), None);
        }
    }
}
