//! The log sink: lines are appended to a shared buffer and written to stderr in batches
//! by one thread (nginx's `access_log ... buffer= flush=`).
//!
//! A log line then costs the handshake a copy under a mutex: no syscall and no wake-up
//! of another thread per line (tracing-appender's channel cost 2–4 `sched_yield` and a
//! `futex` per line, each a context switch on a busy CPU). The writer thread is woken once
//! per batch, and a batch goes out with one `write`.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a batch gathers before it is written: short enough to tail, long enough to
/// batch a burst.
const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// A batch this large is written at once.
const BATCH: usize = 64 * 1024;
/// Past this much unwritten log, writers wait (a blocked stderr): lines are never dropped.
const MAX_QUEUED: usize = 4 * 1024 * 1024;

struct Shared {
    state: Mutex<State>,
    /// The buffer went from empty to non-empty, or the sink is closing.
    wake: Condvar,
    /// The writer thread took a batch.
    drained: Condvar,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// A line that should not wait for the batch (anything but the access log).
    urgent: bool,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a valid Vec: keep logging.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` handed to tracing-subscriber: cheap to clone, one per event.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
    /// Written without waiting for the batch to gather.
    urgent: bool,
}

/// The access log's target: its lines are the ones worth batching. Start-up lines,
/// warnings and errors go out at once, so an operator (or a test) sees them as they happen.
const BATCHED_TARGET: &str = "wsgate::access";

/// Writes what is queued and stops the writer thread when dropped (at exit).
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `sink`; keep the guard alive for the process's life.
pub fn batch_writer<W: Write + Send + 'static>(sink: W) -> io::Result<(BatchWriter, FlushGuard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        drained: Condvar::new(),
    });
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("wsgate-log".into())
        .spawn(move || run(&s, sink))?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
            urgent: true,
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run<W: Write>(shared: &Shared, mut sink: W) {
    let mut out = Vec::new();
    loop {
        let mut st = shared.lock();
        while st.buf.is_empty() && !st.closed {
            st = shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.buf.is_empty() {
            return; // closed, and everything written
        }
        // Let the batch gather: access lines only append meanwhile; an urgent line, a
        // full batch or the exit cut it short.
        st = shared
            .wake
            .wait_timeout_while(st, FLUSH_AFTER, |s| {
                !s.closed && !s.urgent && s.buf.len() < BATCH
            })
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        std::mem::swap(&mut out, &mut st.buf);
        st.urgent = false;
        shared.drained.notify_all();
        drop(st);
        // Nowhere to report a failing stderr; the lines are dropped, as eprintln would.
        let _ = sink.write_all(&out).and_then(|()| sink.flush());
        out.clear();
        if out.capacity() > BATCH {
            out = Vec::new();
        }
    }
}

impl Write for BatchWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut st = self.shared.lock();
        while st.buf.len() >= MAX_QUEUED && !st.closed {
            st = self
                .shared
                .drained
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let was_empty = st.buf.is_empty();
        st.buf.extend_from_slice(bytes);
        let big = st.buf.len() >= BATCH;
        let wake = was_empty || big || (self.urgent && !st.urgent);
        st.urgent |= self.urgent;
        drop(st);
        // One wake-up per batch: the thread sleeps until the first line of the next one
        // (an urgent line cuts the gathering short).
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        BatchWriter {
            shared: self.shared.clone(),
            urgent: meta.target() != BATCHED_TARGET,
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        self.shared.drained.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records each write call separately.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer for access-log lines (batched).
    fn access(w: &BatchWriter) -> BatchWriter {
        BatchWriter {
            shared: w.shared.clone(),
            urgent: false,
        }
    }

    #[test]
    fn a_burst_of_lines_goes_out_in_one_write_in_order() {
        let sink = Sink::default();
        let (w, guard) = batch_writer(sink.clone()).unwrap();
        let w = access(&w);
        for i in 0..100 {
            w.clone()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        for _ in 0..1000 {
            if !sink.0.lock().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(guard);
        let writes = sink.0.lock().unwrap().clone();
        assert_eq!(writes.len(), 1, "one write for the burst");
        let all: String = writes.iter().map(|w| String::from_utf8_lossy(w)).collect();
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn an_urgent_line_takes_the_gathering_batch_with_it() {
        let sink = Sink::default();
        let (w, guard) = batch_writer(sink.clone()).unwrap();
        access(&w).write_all(b"access line\n").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            sink.0.lock().unwrap().is_empty(),
            "access lines wait for the batch"
        );
        w.clone().write_all(b"warning\n").unwrap();
        for _ in 0..1000 {
            if !sink.0.lock().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let writes = sink.0.lock().unwrap().clone();
        drop(guard);
        assert_eq!(writes, vec![b"access line\nwarning\n".to_vec()]);
    }

    #[test]
    fn lines_queued_at_exit_are_written_by_the_guard() {
        let sink = Sink::default();
        let (w, guard) = batch_writer(sink.clone()).unwrap();
        access(&w).write_all(b"last line\n").unwrap();
        drop(guard);
        let all: Vec<u8> = sink.0.lock().unwrap().concat();
        assert_eq!(all, b"last line\n");
    }

    #[test]
    fn writers_wait_for_a_stuck_sink_instead_of_dropping_lines() {
        /// A sink that blocks until released.
        struct Gate(Arc<(Mutex<bool>, Condvar)>, Sink);
        impl Write for Gate {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                let (m, c) = &*self.0;
                let mut open = m.lock().unwrap();
                while !*open {
                    open = c.wait(open).unwrap();
                }
                self.1.write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Sink::default();
        let (w, guard) = batch_writer(Gate(release.clone(), sink.clone())).unwrap();
        let w = access(&w);
        let line = vec![b'x'; 1024];
        let lines = 2 * MAX_QUEUED / line.len() + 10;
        let writer = std::thread::spawn(move || {
            for _ in 0..lines {
                w.clone().write_all(&line).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !writer.is_finished(),
            "the writer waits while the sink is stuck"
        );
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        writer.join().unwrap();
        drop(guard);
        let total: usize = sink.0.lock().unwrap().iter().map(Vec::len).sum();
        assert_eq!(total, lines * 1024, "no line lost");
    }
}
