//! The Prometheus endpoint: `GET /metrics` on `metrics_addr`, in the
//! OpenMetrics text format (encoded by the `prometheus-client` crate).
//!
//! Nothing here is on the write path and nothing is kept per request: a
//! scrape reads what the replica loop and the client server already publish
//! (the loop's status atomics, its cluster-view snapshot, the server's
//! client counters, the file log's I/O counters and its fsync and
//! group-commit histograms, the loop's requests-per-decree histogram, the
//! write-stage histograms) and `/proc/self/statm`, so a scrape never waits on the event
//! loop. The only shared lock it takes besides the cluster view's pointer
//! swap is the stage recorder's, and only when stage timing is on (see
//! [`crate::stages::StageRecorder::bucket_counts`]).
//!
//! The HTTP side is a minimal HTTP/1.1 responder, enough for a Prometheus
//! scraper and `curl`: one request per connection (`Connection: close`),
//! its head read with a size bound ([`MAX_HEAD_BYTES`]) and a time bound
//! ([`HEAD_TIMEOUT`]); `GET`/`HEAD /metrics` is 200, another path 404,
//! another method 405, anything that is not an HTTP/1.x request line 400, a
//! head over the bound 431. At most [`MAX_CONNECTIONS`] scrapes are served
//! at once; more are closed on accept.

use crate::client_registry::ClientRegistry;
use crate::node::Replica;
use crate::stages::StageRecorder;
use paxos_core::Role;
use paxos_log::histogram::Log2Snapshot;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The longest request head read (request line and headers).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing a response may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// The OpenMetrics text content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the latency histogram buckets, in microseconds (50 µs
/// to 10 s; the hdr histograms behind them keep 3 significant digits).
const LATENCY_BOUNDS_US: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Bucket bounds of the fsync latency histogram: `2^i` µs for these `i`
/// (16 µs to 16.8 s).
const FSYNC_BOUND_EXPONENTS: std::ops::RangeInclusive<u32> = 4..=24;
/// Bucket bounds of the batch-size histograms: `2^i` for these `i` (1 to
/// 65,536 requests or appends).
const BATCH_BOUND_EXPONENTS: std::ops::RangeInclusive<u32> = 0..=16;

/// Reads the file log's I/O counters.
pub type LogStatsSource = Arc<dyn Fn() -> paxos_log::LogStats + Send + Sync>;

/// What a scrape reads.
#[derive(Clone)]
pub struct Sources {
    /// The running replica (status, cluster view, stages, submit queue).
    pub replica: Replica,
    /// The client server's registry and counters.
    pub clients: Arc<ClientRegistry>,
    /// The client limit the server enforces.
    pub max_clients: usize,
    /// The file log's counters, if the node runs on the file log.
    pub log_stats: Option<LogStatsSource>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("replica", &self.replica)
            .field("max_clients", &self.max_clients)
            .field("log_stats", &self.log_stats.is_some())
            .finish()
    }
}

/// Aborts a spawned task when dropped (the endpoint ends with its node).
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, sources: Sources) {
    let sources = Arc::new(sources);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Too many scrapes at once: closing is the cheapest answer.
            continue;
        };
        let sources = Arc::clone(&sources);
        tokio::spawn(async move {
            handle(socket, &sources).await;
            drop(permit);
        });
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (`head_only`: `HEAD /metrics`).
    Metrics {
        /// Answer with the headers only.
        head_only: bool,
    },
    /// Another path: 404.
    NotFound,
    /// Another method: 405.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line: 400.
    BadRequest,
    /// The head exceeds [`MAX_HEAD_BYTES`]: 431.
    HeadTooLarge,
}

/// Routes a complete request head (through its blank line).
pub fn route(head: &[u8]) -> Route {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let is_token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !is_token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or(target);
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::NotFound
    }
}

/// How reading a request head ended.
#[derive(Debug)]
enum Head {
    /// Through its blank line.
    Complete(Vec<u8>),
    /// The peer closed before sending anything.
    Closed,
    /// The peer closed in the middle of the head.
    Truncated,
    /// Longer than [`MAX_HEAD_BYTES`].
    TooLarge,
}

async fn read_head(socket: &mut TcpStream) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if head.is_empty() {
                Head::Closed
            } else {
                Head::Truncated
            });
        }
        // The blank line may straddle two reads.
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head[searched_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            head.truncate(searched_from + end + 4);
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
    }
}

async fn handle(mut socket: TcpStream, sources: &Sources) {
    let route = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut socket)).await {
        // A client that does not finish its request in time is dropped.
        Err(_elapsed) => return,
        Ok(Err(_)) | Ok(Ok(Head::Closed)) => return,
        Ok(Ok(Head::Truncated)) => Route::BadRequest,
        Ok(Ok(Head::TooLarge)) => Route::HeadTooLarge,
        Ok(Ok(Head::Complete(head))) => route(&head),
    };
    let response = respond(route, sources);
    let write = async {
        socket.write_all(&response).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}

fn respond(route: Route, sources: &Sources) -> Vec<u8> {
    let (status, content_type, body, head_only) = match route {
        Route::Metrics { head_only } => ("200 OK", CONTENT_TYPE, render(sources), head_only),
        Route::NotFound => ("404 Not Found", "text/plain", "not found\n".into(), false),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".into(),
            false,
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".into(),
            false,
        ),
        Route::HeadTooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n".into(),
            false,
        ),
    };
    let allow = if route == Route::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The OpenMetrics text of one scrape.
pub fn render(sources: &Sources) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(NodeCollector(sources.clone())));
    let mut text = String::with_capacity(8 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        // Writing into a String does not fail; say so if it ever does.
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    text
}

/// Resident set size of this process in bytes, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|&p| p > 0)?)
}

/// Encodes everything [`Sources`] publishes, read at encode time.
#[derive(Debug)]
struct NodeCollector(Sources);

/// Encodes one unlabelled metric.
fn one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> std::fmt::Result {
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    one(encoder, name, help, &ConstGauge::new(v))
}

fn gauge_u(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    gauge(encoder, name, help, i64::try_from(v).unwrap_or(i64::MAX))
}

/// A counter; `name` is without the `_total` the encoder appends.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    one(encoder, name, help, &ConstCounter::new(v))
}

/// A histogram from a [`Log2Snapshot`], with bucket bounds `2^i × scale`
/// for `i` in `exponents` and `+Inf`; values and sum are scaled by `scale`
/// too (1e-6 turns microseconds into seconds).
fn log2_histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &Log2Snapshot,
    exponents: std::ops::RangeInclusive<u32>,
    scale: f64,
) -> std::fmt::Result {
    // The encoder accumulates: it wants each bucket's own count.
    let mut buckets = Vec::with_capacity(exponents.clone().count() + 1);
    let mut below = 0;
    for (bound, cumulative) in h.cumulative(exponents) {
        buckets.push((bound as f64 * scale, cumulative - below));
        below = cumulative;
    }
    let count = h.count();
    buckets.push((f64::MAX, count - below));
    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    e.encode_histogram::<NoLabelSet>(h.sum as f64 * scale, count, &buckets, None)
}

/// A gauge with one label, one series per `(label value, value)`.
fn labelled(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    series: impl IntoIterator<Item = (String, f64)>,
) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in series {
        let labels = [(label, value)];
        let family = e.encode_family(&labels)?;
        ConstGauge::new(v).encode(family)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        let sources = &self.0;
        let replica = &sources.replica;
        let s = replica.status();

        // Replication.
        let role = match s.role {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::Follower => "follower",
        };
        labelled(
            e,
            "paxos_role",
            "This replica's role: 1 on the series of the current one",
            "role",
            ["leader", "candidate", "follower"]
                .map(|r| (r.to_string(), f64::from(u8::from(r == role)))),
        )?;
        gauge_u(
            e,
            "paxos_replica_id",
            "This replica's id",
            u64::from(s.id.0),
        )?;
        gauge_u(
            e,
            "paxos_leader_id",
            "The leader this replica believes in (0: none known)",
            s.leader.map_or(0, |l| u64::from(l.0)),
        )?;
        gauge_u(
            e,
            "paxos_ballot_round",
            "Round of the promised ballot",
            s.ballot_round,
        )?;
        gauge_u(
            e,
            "paxos_commit_index",
            "Highest slot known chosen",
            s.commit_index.0,
        )?;
        gauge_u(
            e,
            "paxos_applied_index",
            "Highest slot applied to the state machine",
            s.applied_index.0,
        )?;
        gauge_u(
            e,
            "paxos_in_flight_decrees",
            "Decrees this node proposed that are not applied yet",
            s.in_flight,
        )?;
        gauge_u(
            e,
            "paxos_checkpoint_slot",
            "Slot of the newest durable checkpoint (0: none)",
            s.checkpoint_slot.0,
        )?;
        gauge_u(
            e,
            "paxos_needs_snapshot",
            "1 while this replica fetches a checkpoint from a peer",
            u64::from(s.needs_snapshot),
        )?;
        counter(
            e,
            "paxos_proposed_batches",
            "Batches (decrees) proposed",
            s.proposed_batches,
        )?;
        counter(
            e,
            "paxos_proposed_requests",
            "Client requests proposed",
            s.proposed_requests,
        )?;
        log2_histogram(
            e,
            "paxos_decree_requests",
            "Client requests per decree this replica proposed",
            &replica.decree_requests(),
            BATCH_BOUND_EXPONENTS,
            1.0,
        )?;
        counter(
            e,
            "paxos_role_changes",
            "Changes of this replica's role",
            s.role_changes,
        )?;
        counter(
            e,
            "paxos_leader_changes",
            "Changes of the believed leader from one known leader to another",
            s.leader_changes,
        )?;
        counter(
            e,
            "paxos_checkpoints_saved",
            "Checkpoints this replica saved",
            s.checkpoints_saved,
        )?;
        counter(
            e,
            "paxos_checkpoints_installed",
            "Checkpoints installed from peers (state transfers)",
            s.checkpoints_installed,
        )?;
        counter(
            e,
            "paxos_fetch_served_from_disk",
            "Catch-up chunks served to peers from the log in storage (below the in-memory log)",
            s.fetches_served_from_disk,
        )?;
        counter(
            e,
            "paxos_reads_served",
            "Reads this replica answered without the log (ReadIndex, lease or follower reads)",
            s.reads_served,
        )?;
        gauge_u(
            e,
            "paxos_log_full",
            "1 while storage reports its log full: new writes wait until a checkpoint lets it truncate",
            u64::from(s.log_full),
        )?;
        counter(
            e,
            "paxos_accepts_refused_log_full",
            "Accepts this replica did not vote on because its log was full (the leader resends them)",
            s.accepts_refused_log_full,
        )?;
        gauge_u(
            e,
            "paxos_pending_reads",
            "Reads waiting for a leadership confirmation or for their slot to be applied",
            s.pending_reads,
        )?;
        gauge_u(
            e,
            "paxos_read_lease",
            "1 when linearizable reads use leader leases, 0 with ReadIndex",
            u64::from(s.read_mode == "lease"),
        )?;
        let (queued, capacity) = replica.submit_queue_depth();
        gauge_u(
            e,
            "paxos_submit_queue_depth",
            "Requests waiting in the submit queue",
            queued as u64,
        )?;
        gauge_u(
            e,
            "paxos_submit_queue_capacity",
            "Slots in the submit queue",
            capacity as u64,
        )?;

        // Membership and peers (as of the loop's last cluster-view snapshot).
        let view = replica.cluster();
        gauge_u(
            e,
            "paxos_membership_slot",
            "Slot of the reconfiguration in force (0: the initial membership)",
            view.membership_slot.0,
        )?;
        gauge_u(
            e,
            "paxos_voters",
            "Voters in the membership in force",
            view.membership.voters.len() as u64,
        )?;
        gauge_u(
            e,
            "paxos_learners",
            "Learners in the membership in force",
            view.membership.learners.len() as u64,
        )?;
        gauge_u(
            e,
            "paxos_repairing",
            "1 while this replica repairs damaged storage",
            u64::from(view.repair.is_some()),
        )?;
        let peers = &view.peers;
        let peer_series = |f: &dyn Fn(&paxos_core::PeerStatus) -> Option<f64>| {
            peers
                .iter()
                .filter_map(|p| f(p).map(|v| (p.id.0.to_string(), v)))
                .collect::<Vec<_>>()
        };
        labelled(
            e,
            "paxos_peer_lag_slots",
            "Slots a peer is behind this replica's commit index (absent: never heard from)",
            "peer",
            peer_series(&|p| p.lag.map(|l| l as f64)),
        )?;
        labelled(
            e,
            "paxos_peer_commit_index",
            "The highest commit index a peer reported",
            "peer",
            peer_series(&|p| p.commit_index.map(|c| c.0 as f64)),
        )?;
        labelled(
            e,
            "paxos_peer_last_contact_seconds",
            "Seconds since a peer was last heard from, when the loop last looked",
            "peer",
            peer_series(&|p| p.last_heard_us_ago.map(|us| us as f64 / 1e6)),
        )?;
        labelled(
            e,
            "paxos_peer_connected",
            "1 if a peer was heard from within the minimum election timeout",
            "peer",
            peer_series(&|p| Some(f64::from(u8::from(p.connected)))),
        )?;
        labelled(
            e,
            "paxos_peer_voter",
            "1 if a peer votes, 0 for a learner",
            "peer",
            peer_series(&|p| Some(f64::from(u8::from(p.voter)))),
        )?;
        drop(view);

        // Clients.
        let clients = &sources.clients;
        let stats = &clients.stats;
        gauge_u(
            e,
            "paxos_connected_clients",
            "Open client connections",
            clients.len() as u64,
        )?;
        gauge_u(
            e,
            "paxos_max_clients",
            "The client connection limit",
            sources.max_clients as u64,
        )?;
        gauge_u(
            e,
            "paxos_client_reply_bytes",
            "Reply bytes held for clients, unwritten",
            clients.total_unwritten() as u64,
        )?;
        gauge_u(
            e,
            "paxos_max_client_reply_bytes",
            "The node-wide limit on unwritten reply bytes",
            clients.reply_limit as u64,
        )?;
        counter(
            e,
            "paxos_client_rejected_connections",
            "Connections refused at max_clients",
            stats.rejected.load(Ordering::Relaxed),
        )?;
        {
            let mut m = e.encode_descriptor(
                "paxos_client_disconnects",
                "Clients disconnected by the server, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, a) in [
                ("output_limit", &stats.output_limit_disconnects),
                ("reply_memory", &stats.memory_shed_disconnects),
                ("idle", &stats.idle_disconnects),
            ] {
                let labels = [("reason", reason)];
                ConstCounter::new(a.load(Ordering::Relaxed)).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            e,
            "paxos_client_heap_trims",
            "Heap trims after reply memory was released",
            stats.heap_trims.load(Ordering::Relaxed),
        )?;

        // Storage (file log only).
        if let Some(log_stats) = &sources.log_stats {
            let l = log_stats();
            counter(e, "paxos_log_appends", "Appends to the file log", l.appends)?;
            counter(
                e,
                "paxos_log_flushes",
                "Group commits (write + fdatasync) of the file log",
                l.flushes,
            )?;
            one(e, "paxos_log_flush_seconds", "Time spent in file-log writes and fdatasyncs; divide its rate by paxos_log_flushes_total's for the mean", &ConstCounter::new(l.flush_micros as f64 / 1e6))?;
            counter(
                e,
                "paxos_log_bytes_written",
                "Record bytes written to log segments",
                l.bytes_written,
            )?;
            log2_histogram(
                e,
                "paxos_log_fsync_seconds",
                "Latency of each fdatasync of a file-log segment (power-of-two buckets)",
                &l.fsync_micros,
                FSYNC_BOUND_EXPONENTS,
                1e-6,
            )?;
            log2_histogram(
                e,
                "paxos_log_appends_per_flush",
                "Appends written by each group commit of the file log",
                &l.appends_per_flush,
                BATCH_BOUND_EXPONENTS,
                1.0,
            )?;
        }

        // Process.
        if let Some(rss) = resident_bytes() {
            gauge_u(
                e,
                "paxos_process_resident_memory_bytes",
                "Resident set size of the node process",
                rss,
            )?;
        }

        // Write-path stages (leader; recorded only with stage timing on).
        let stages = replica.stages();
        gauge_u(
            e,
            "paxos_stage_timing_enabled",
            "1 if the write-stage histograms record (PAXOS_KV_STAGE_TIMING)",
            u64::from(stages.is_enabled()),
        )?;
        if stages.is_enabled() {
            let mut m = e.encode_descriptor(
                "paxos_write_stage_latency_seconds",
                "Time between consecutive points of a write on the leader (stage=total: received to replied)",
                None,
                MetricType::Histogram,
            )?;
            let bounds: Vec<(f64, u64)> = LATENCY_BOUNDS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain(std::iter::once(f64::MAX))
                .map(|b| (b, 0))
                .collect();
            for stage in stages.bucket_counts(&LATENCY_BOUNDS_US) {
                let buckets: Vec<(f64, u64)> = bounds
                    .iter()
                    .zip(&stage.buckets)
                    .map(|(&(bound, _), &n)| (bound, n))
                    .collect();
                let labels = [("stage", StageRecorder::stage_name(stage.stage))];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    stage.sum_us as f64 / 1e6,
                    stage.count,
                    &buckets,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> Vec<u8> {
        format!("{line}\r\nHost: x\r\n\r\n").into_bytes()
    }

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(
            route(&req("GET /metrics HTTP/1.1")),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(&req("GET /metrics?x=1 HTTP/1.0")),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(&req("HEAD /metrics HTTP/1.1")),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(&req("GET / HTTP/1.1")), Route::NotFound);
        assert_eq!(route(&req("GET /metricsx HTTP/1.1")), Route::NotFound);
        assert_eq!(
            route(&req("POST /metrics HTTP/1.1")),
            Route::MethodNotAllowed
        );
        assert_eq!(route(&req("DELETE /x HTTP/1.1")), Route::MethodNotAllowed);
    }

    #[test]
    fn malformed_request_lines_are_bad_requests() {
        for line in [
            "",
            "GET",
            "GET /metrics",
            "GET /metrics HTTP/2",
            "GET metrics HTTP/1.1",
            "GET  /metrics HTTP/1.1",
            "GET /metrics HTTP/1.1 extra",
            "G\u{e9}T /metrics HTTP/1.1",
            "\u{1}\u{2} / HTTP/1.1",
        ] {
            assert_eq!(route(&req(line)), Route::BadRequest, "{line:?}");
        }
        assert_eq!(
            route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Route::BadRequest
        );
        assert_eq!(route(b""), Route::BadRequest);
    }

    #[test]
    fn resident_bytes_reads_this_process() {
        let rss = resident_bytes().expect("linux has /proc/self/statm");
        assert!(rss > 1 << 20, "{rss}");
    }
}
