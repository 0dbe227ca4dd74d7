//! The node's client connections as a whole: what each one owes in reply
//! bytes, the node-wide total, counters for `INFO`, and the sweeper that
//! enforces the node-wide limit and hands freed memory back (policies in
//! [`crate::reply_limits`]).
//!
//! A connection's reader and writer tasks share its [`ConnShared`]: the
//! writer counts the bytes it holds, the reader looks at them before it
//! takes another request (backpressure) and waits on `wake` while it may
//! not. Either task, or the sweeper, ends the connection through `closed`.

use crate::reply_limits::{self, TrimPolicy};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How often the sweeper looks at the total.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// One connection's state shared by its tasks and the sweeper.
#[derive(Debug)]
pub struct ConnShared {
    /// Registry key.
    pub id: u64,
    /// Reply bytes produced and not yet taken by the socket.
    pub unwritten: AtomicUsize,
    /// Requests read whose reply is not produced yet.
    pub unresolved: AtomicUsize,
    /// Largest recent reply, decaying ([`reply_limits::decayed_largest`]).
    pub recent_largest_reply: AtomicUsize,
    /// The reader waits here while backpressure holds it.
    pub wake: Notify,
    /// Set to true to end the connection (both tasks watch it).
    pub closed: watch::Sender<bool>,
    /// When the connection was accepted.
    pub born: Instant,
    /// Milliseconds after `born` of the last write progress.
    pub last_write_ms: AtomicU64,
}

impl ConnShared {
    /// Ends the connection: both of its tasks return soon.
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.wake.notify_one();
    }

    /// Whether a request of the connection is still in the node's hands
    /// (in consensus, or an operator command running): then the client is
    /// waiting on the node, not idle.
    pub fn awaits_the_node(&self) -> bool {
        self.unresolved.load(Ordering::Relaxed) > 0
    }

    /// Notes that the socket took reply bytes now.
    pub fn note_write_progress(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_write_ms.store(ms, Ordering::Relaxed);
    }

    /// When the socket last took reply bytes (or when the connection began).
    pub fn last_write_progress(&self) -> Instant {
        self.born + Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed))
    }
}

/// Counters shown by `INFO` (Redis's names where Redis has one).
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Connections refused at the limit (`rejected_connections`).
    pub rejected: AtomicU64,
    /// Disconnected past a per-client output limit.
    pub output_limit_disconnects: AtomicU64,
    /// Disconnected because the node's reply memory was over its limit.
    pub memory_shed_disconnects: AtomicU64,
    /// Disconnected after `client_timeout_secs` idle.
    pub idle_disconnects: AtomicU64,
    /// Times freed reply memory was handed back (`malloc_trim`).
    pub heap_trims: AtomicU64,
}

/// All connections of a node.
#[derive(Debug)]
pub struct ClientRegistry {
    conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
    next_id: AtomicU64,
    /// Unwritten reply bytes of all connections.
    total_unwritten: AtomicUsize,
    /// The limit on `total_unwritten`.
    pub reply_limit: usize,
    /// Readers held by the node-wide limit wait here.
    below_limit: Notify,
    /// Counters.
    pub stats: ClientStats,
}

impl ClientRegistry {
    /// An empty registry with a node-wide limit of `reply_limit` bytes.
    pub fn new(reply_limit: usize) -> ClientRegistry {
        ClientRegistry {
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            total_unwritten: AtomicUsize::new(0),
            reply_limit,
            below_limit: Notify::new(),
            stats: ClientStats::default(),
        }
    }

    /// Registers a new connection, its recent largest reply taken to be
    /// `initial_largest_reply` ([`reply_limits::initial_largest`]).
    pub fn register(&self, initial_largest_reply: usize) -> Arc<ConnShared> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnShared {
            id,
            unwritten: AtomicUsize::new(0),
            unresolved: AtomicUsize::new(0),
            recent_largest_reply: AtomicUsize::new(initial_largest_reply),
            wake: Notify::new(),
            closed: watch::Sender::new(false),
            born: Instant::now(),
            last_write_ms: AtomicU64::new(0),
        });
        self.lock().insert(id, Arc::clone(&conn));
        conn
    }

    /// Forgets a connection whose tasks ended; its unwritten bytes, if any,
    /// leave the total.
    pub fn unregister(&self, conn: &ConnShared) {
        self.lock().remove(&conn.id);
        let left = conn.unwritten.swap(0, Ordering::Relaxed);
        self.sub(left);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnShared>>> {
        // A panic while holding the lock leaves the map intact: go on.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are no connections.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All connections' unwritten reply bytes.
    pub fn total_unwritten(&self) -> usize {
        self.total_unwritten.load(Ordering::Relaxed)
    }

    /// Whether the node-wide limit holds every reader.
    pub fn over_limit(&self) -> bool {
        self.total_unwritten() > self.reply_limit
    }

    /// Counts `n` more unwritten bytes of `conn`.
    pub fn add(&self, conn: &ConnShared, n: usize) {
        conn.unwritten.fetch_add(n, Ordering::Relaxed);
        self.total_unwritten.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` bytes of `conn` written.
    pub fn written(&self, conn: &ConnShared, n: usize) {
        conn.unwritten.fetch_sub(n, Ordering::Relaxed);
        self.sub(n);
    }

    fn sub(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.total_unwritten.fetch_sub(n, Ordering::Relaxed);
        if before > self.reply_limit && before - n <= self.reply_limit {
            self.below_limit.notify_waiters();
        }
    }

    /// Waits until the node-wide total is within its limit.
    pub async fn wait_below_limit(&self) {
        loop {
            let notified = self.below_limit.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drop in between is not missed.
            notified.as_mut().enable();
            if !self.over_limit() {
                return;
            }
            notified.await;
        }
    }

    /// Runs forever: every 100 ms, disconnects the connections
    /// holding the most reply bytes while the total is over the limit, and
    /// trims the heap after the total fell a lot.
    pub async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trim = TrimPolicy::default();
        let mut sizes = Vec::new();
        loop {
            tick.tick().await;
            let total = self.total_unwritten();
            if total > self.reply_limit {
                self.shed(total, &mut sizes);
            }
            if trim.sample(total) {
                let me = Arc::clone(&self);
                // A trim walks the heap: not on a runtime worker.
                let _ = tokio::task::spawn_blocking(move || {
                    reply_limits::trim_heap();
                    me.stats.heap_trims.fetch_add(1, Ordering::Relaxed);
                })
                .await;
            }
        }
    }

    fn shed(&self, total: usize, sizes: &mut Vec<(usize, u64)>) {
        sizes.clear();
        let conns = self.lock();
        sizes.extend(
            conns
                .values()
                .map(|c| (c.unwritten.load(Ordering::Relaxed), c.id)),
        );
        for id in reply_limits::shed_victims(sizes, total, self.reply_limit) {
            if let Some(c) = conns.get(&id) {
                tracing::warn!(
                    conn = id,
                    unwritten = c.unwritten.load(Ordering::Relaxed),
                    total,
                    limit = self.reply_limit,
                    "disconnecting a client: replies of all clients exceed max_client_reply_bytes"
                );
                self.stats
                    .memory_shed_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                c.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn totals_follow_connections_and_release_waiting_readers() {
        let reg = Arc::new(ClientRegistry::new(100));
        let a = reg.register(0);
        let b = reg.register(0);
        reg.add(&a, 80);
        reg.add(&b, 30);
        assert!(reg.over_limit());
        let waiter = tokio::spawn({
            let reg = Arc::clone(&reg);
            async move { reg.wait_below_limit().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        reg.written(&a, 20);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the reader is released once the total is within the limit")
            .unwrap();
        // A connection that goes away takes its bytes out of the total.
        reg.unregister(&a);
        assert_eq!(reg.total_unwritten(), 30);
        assert_eq!(reg.len(), 1);
    }

    #[tokio::test]
    async fn shedding_closes_the_largest_connection() {
        let reg = ClientRegistry::new(100);
        let small = reg.register(0);
        let big = reg.register(0);
        reg.add(&small, 10);
        reg.add(&big, 200);
        let mut big_closed = big.closed.subscribe();
        reg.shed(reg.total_unwritten(), &mut Vec::new());
        assert!(*big_closed.borrow_and_update());
        assert!(!*small.closed.borrow());
        assert_eq!(reg.stats.memory_shed_disconnects.load(Ordering::Relaxed), 1);
    }
}
