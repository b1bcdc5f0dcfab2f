//! The blocking backend's write-ahead journal (`storage-layout = journal`), written the way
//! a team without io_uring would (PostgreSQL's WAL writer): connection threads append under
//! a lock and wait on a condition variable until their LSN is durable; one writer thread
//! flushes (one write + its durability step at a time, everything appended meanwhile in the
//! next one: group commit); one checkpointer thread makes the replay files durable (syncfs
//! of the store) and lets the journal reuse its space.

use super::registry::{JournalGauge, Registry};
use crate::storage::journal::{AppendError, Journal, JournalStats};
use crate::storage::journal_io::{self, JournalFile, JournalIo};
use crate::storage::{AlignedBuf, WriteReq};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct State {
    journal: Journal,
    stop: bool,
    reported: JournalStats,
}

pub struct Wal {
    st: Mutex<State>,
    /// Appenders wait here for their LSN to become durable (or for space).
    durable: Condvar,
    /// The writer and checkpointer wait here for work.
    work: Condvar,
    root: PathBuf,
    reg: Arc<Registry>,
    fd: OwnedFd,
    jio: JournalIo,
    path: PathBuf,
    /// Set when the journal fills up during a checkpoint: its writeback stops pacing.
    hurry: std::sync::atomic::AtomicBool,
}

/// Longest a thread waits on a condition variable before it looks again.
const POLL: Duration = Duration::from_millis(100);

impl Wal {
    /// Starts the writer and checkpointer threads of `file`.
    pub fn start(file: JournalFile, reg: Arc<Registry>) -> io::Result<Arc<Wal>> {
        let JournalFile {
            path,
            fd,
            journal,
            io: jio,
        } = file;
        let wal = Arc::new(Wal {
            fd,
            jio,
            path,
            st: Mutex::new(State {
                journal,
                stop: false,
                reported: JournalStats::default(),
            }),
            durable: Condvar::new(),
            work: Condvar::new(),
            root: reg.paths.root.clone(),
            reg,
            hurry: Default::default(),
        });
        let w = wal.clone();
        std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || w.writer_loop())?;
        let w = wal.clone();
        std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || w.checkpoint_loop())?;
        Ok(wal)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the threads once everything appended is durable.
    pub fn stop(&self) {
        self.lock().stop = true;
        self.work.notify_all();
    }

    /// Journals one completed replay-file write of match `id` and waits until it is durable.
    pub fn append_wait(&self, id: &str, req: &WriteReq) -> io::Result<()> {
        let mut st = self.lock();
        let lsn = loop {
            let j = &mut st.journal;
            match j.append(id, req.first_seq, req.last_seq, req.offset, req.data()) {
                Ok(l) => {
                    if j.checkpointing() && j.filling() {
                        self.hurry.store(true, Ordering::Relaxed);
                    }
                    break l;
                }
                Err(AppendError::Full) => {
                    self.hurry.store(true, Ordering::Relaxed);
                    // back-pressure: wait for a checkpoint to free space
                    self.work.notify_all();
                    st = self
                        .durable
                        .wait_timeout(st, POLL)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                Err(AppendError::Failed(e)) => return Err(io::Error::other(e)),
            }
        };
        self.work.notify_all();
        while st.journal.durable() < lsn {
            if let Some(e) = st.journal.failed() {
                return Err(io::Error::other(e.to_string()));
            }
            st = self
                .durable
                .wait_timeout(st, POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    fn report(&self, st: &mut State) {
        let now = st.journal.stats();
        let j = &st.journal;
        let last = crate::storage::now_unix_us()
            .saturating_sub(j.checkpoint_age(Instant::now()).as_micros() as u64);
        self.reg.metrics.journal(
            0,
            &st.reported,
            &now,
            JournalGauge {
                occupancy_bytes: j.occupancy(),
                capacity_bytes: j.capacity(),
                last_checkpoint_unix_us: last,
            },
        );
        st.reported = now;
    }

    fn writer_loop(&self) {
        let (align, flush_bytes) = {
            let st = self.lock();
            (st.journal.options().align, st.journal.options().flush_bytes)
        };
        let cap = (flush_bytes * 4).max(1 << 20);
        let mut buf = AlignedBuf::with_capacity(cap, align);
        loop {
            let mut st = self.lock();
            let w = loop {
                let now = Instant::now();
                if let Some(w) = st.journal.take_write(now, buf.spare_mut()) {
                    buf.set_len(w.len);
                    break w;
                }
                if st.stop && !st.journal.pending() {
                    return;
                }
                let wait = st
                    .journal
                    .write_due_at()
                    .map_or(POLL, |t| t.saturating_duration_since(now).min(POLL));
                st = self
                    .work
                    .wait_timeout(st, wait.max(Duration::from_micros(50)))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            };
            drop(st);
            let r = journal_io::write(&self.fd, self.jio, &w, buf.as_slice());
            let mut st = self.lock();
            let r = r.map_err(|e| format!("journal {} write failed: {e}", self.path.display()));
            if let Err(e) = &r {
                tracing::error!("storage: {e}");
            }
            st.journal.write_done(w, r, Instant::now());
            self.report(&mut st);
            drop(st);
            self.durable.notify_all();
            self.work.notify_all();
        }
    }

    fn checkpoint_loop(&self) {
        loop {
            let mut st = self.lock();
            let (redo, spread) = loop {
                if st.stop {
                    return;
                }
                let now = Instant::now();
                match st.journal.checkpoint_due_at() {
                    Some(t) if t <= now => {
                        let spread = st.journal.checkpoint_spread();
                        self.hurry.store(false, Ordering::Relaxed);
                        break (st.journal.begin_checkpoint(), spread);
                    }
                    Some(t) => {
                        st = self
                            .work
                            .wait_timeout(st, (t - now).min(POLL))
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => {
                        st = self
                            .work
                            .wait_timeout(st, POLL)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                }
            };
            let delay = st.journal.options().test_checkpoint_delay;
            drop(st);
            if !delay.is_zero() {
                std::thread::sleep(delay); // TEST ONLY (test-checkpoint-delay-ms)
            }
            let r = journal_io::sync_store(
                &self.root,
                &self.reg.live_part_paths(),
                spread,
                &self.hurry,
            );
            if let Err(e) = &r {
                tracing::error!("storage: checkpoint: {e}; retried at the next interval");
            }
            let mut st = self.lock();
            st.journal
                .checkpoint_synced(redo, r.is_ok(), Instant::now());
            drop(st);
            self.work.notify_all();
        }
    }
}
