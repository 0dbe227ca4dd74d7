//! The Prometheus endpoint of live node processes (issue #18): a 3-node
//! cluster serves `GET /metrics` with the replication, peer, client,
//! storage, memory and write-stage series, and bad requests get an error or
//! are closed, never hung on.

use paxos_kv::client::Client;
use paxos_kv::config::{StorageKind, Tuning};
use paxos_kv::procs::LocalCluster;
use paxos_kv::resp::Frame;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` raw and reads until the server closes (or `limit`).
async fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("metrics port accepts");
    s.write_all(request).await.expect("request written");
    let mut out = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut out))
        .await
        .expect("the server answers and closes in time")
        .expect("read the response");
    String::from_utf8(out).expect("responses are text")
}

async fn scrape(addr: SocketAddr) -> String {
    let text = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(
            "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}\r\n", body.len())),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.to_string()
}

/// The value of the series `name` (with its labels, as printed), if present.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

fn must(body: &str, series: &str) -> f64 {
    value(body, series).unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
}

#[test]
fn live_nodes_serve_metrics_and_refuse_bad_requests() {
    // Before any thread exists: the node processes inherit it, and their
    // write-stage histograms record.
    std::env::set_var("PAXOS_KV_STAGE_TIMING", "1");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario());
}

async fn scenario() {
    let dir = tempfile::Builder::new()
        .prefix("paxos-kv-metrics-")
        .tempdir()
        .unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_paxos-kv"));
    let cluster =
        LocalCluster::start(bin, dir.path(), 3, StorageKind::File, &Tuning::default()).unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let leader_metrics = cluster.metrics_addr(leader).expect("metrics_addr set");

    // A request that never finishes is closed after the head timeout
    // (5 s); it runs while the rest of the test does.
    let stalled = tokio::spawn(async move {
        let mut s = TcpStream::connect(leader_metrics).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: te")
            .await
            .unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
        (read.is_ok(), out, started.elapsed())
    });

    let mut client = Client::connect(cluster.client_addr(leader), Duration::from_secs(10))
        .await
        .unwrap();
    match client.cmd(&[b"SET", b"metrics-key", b"v"]).await.unwrap() {
        Frame::Simple(s) if s == "OK" => {}
        other => panic!("SET answered {other:?}"),
    }
    // A read the leader answers off the log.
    match client.cmd(&[b"GET", b"metrics-key"]).await.unwrap() {
        Frame::Bulk(Some(v)) if &v[..] == b"v" => {}
        other => panic!("GET answered {other:?}"),
    }

    // Peers report on heartbeats: wait until the leader has heard from both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = scrape(leader_metrics).await;
        let heard = (0..3).filter(|&i| i != leader).all(|i| {
            value(
                &body,
                &format!("paxos_peer_connected{{peer=\"{}\"}}", i + 1),
            ) == Some(1.0)
        });
        let read_counted = value(&body, "paxos_reads_served_total").is_some_and(|n| n >= 1.0);
        if (heard && read_counted) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = (leader + 1) as f64;
    assert_eq!(must(&body, "paxos_role{role=\"leader\"}"), 1.0, "{body}");
    assert_eq!(must(&body, "paxos_role{role=\"follower\"}"), 0.0, "{body}");
    assert_eq!(must(&body, "paxos_replica_id"), id);
    assert_eq!(must(&body, "paxos_leader_id"), id);
    assert!(must(&body, "paxos_ballot_round") >= 1.0, "{body}");
    assert!(must(&body, "paxos_commit_index") >= 1.0, "{body}");
    assert!(must(&body, "paxos_applied_index") >= 1.0, "{body}");
    assert!(
        must(&body, "paxos_proposed_requests_total") >= 1.0,
        "{body}"
    );
    assert!(must(&body, "paxos_connected_clients") >= 1.0, "{body}");
    assert!(must(&body, "paxos_max_clients") >= 1.0, "{body}");
    assert_eq!(must(&body, "paxos_voters"), 3.0);
    assert!(must(&body, "paxos_log_flushes_total") >= 1.0, "{body}");
    assert!(must(&body, "paxos_log_appends_total") >= 1.0, "{body}");
    assert!(
        must(&body, "paxos_process_resident_memory_bytes") > 1e6,
        "{body}"
    );
    assert!(must(&body, "paxos_role_changes_total") >= 1.0, "{body}");
    must(&body, "paxos_leader_changes_total");
    must(&body, "paxos_checkpoints_saved_total");
    must(&body, "paxos_checkpoints_installed_total");
    must(&body, "paxos_submit_queue_depth");
    assert!(must(&body, "paxos_reads_served_total") >= 1.0, "{body}");
    assert_eq!(
        must(&body, "paxos_read_lease"),
        0.0,
        "ReadIndex is the default"
    );
    must(&body, "paxos_pending_reads");
    assert_eq!(
        must(&body, "paxos_log_full"),
        0.0,
        "a file log always has room"
    );
    assert_eq!(must(&body, "paxos_accepts_refused_log_full_total"), 0.0);
    assert!(must(&body, "paxos_submit_queue_capacity") >= 1.0);
    must(&body, "paxos_client_disconnects_total{reason=\"idle\"}");
    for peer in (0..3).filter(|&i| i != leader) {
        let p = peer + 1;
        assert_eq!(
            must(&body, &format!("paxos_peer_connected{{peer=\"{p}\"}}")),
            1.0,
            "{body}"
        );
        assert!(must(&body, &format!("paxos_peer_lag_slots{{peer=\"{p}\"}}")) >= 0.0);
        let contact = must(
            &body,
            &format!("paxos_peer_last_contact_seconds{{peer=\"{p}\"}}"),
        );
        assert!((0.0..5.0).contains(&contact), "{body}");
    }
    // The SET went through every stage on the leader.
    assert_eq!(must(&body, "paxos_stage_timing_enabled"), 1.0, "{body}");
    let total = "paxos_write_stage_latency_seconds_count{stage=\"total\"}";
    assert!(must(&body, total) >= 1.0, "{body}");
    let inf = "paxos_write_stage_latency_seconds_bucket{le=\"+Inf\",stage=\"total\"}";
    assert_eq!(must(&body, inf), must(&body, total), "{body}");
    // The SET was a decree of one request, written by a group commit and
    // its fdatasync: the three histograms counted them, every value falls
    // in some bucket (+Inf equals the count), and the buckets accumulate.
    for (histogram, at_least) in [
        ("paxos_decree_requests", 1.0),
        ("paxos_log_appends_per_flush", 1.0),
        ("paxos_log_fsync_seconds", 1.0),
    ] {
        let count = must(&body, &format!("{histogram}_count"));
        assert!(count >= at_least, "{histogram}: {body}");
        assert!(must(&body, &format!("{histogram}_sum")) > 0.0, "{body}");
        let inf = format!("{histogram}_bucket{{le=\"+Inf\"}}");
        assert_eq!(must(&body, &inf), count, "{body}");
        let buckets: Vec<f64> = body
            .lines()
            .filter(|l| l.starts_with(&format!("{histogram}_bucket{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(buckets.len() > 10, "{histogram}: {body}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{body}");
    }
    // A one-request decree is in the first bucket (le=1).
    assert!(
        must(&body, "paxos_decree_requests_bucket{le=\"1.0\"}") >= 1.0,
        "{body}"
    );

    // A follower knows the leader and says it follows.
    let follower = (leader + 1) % 3;
    // It learns the commit index with the next heartbeat: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let fbody = loop {
        let fbody = scrape(cluster.metrics_addr(follower).unwrap()).await;
        if must(&fbody, "paxos_applied_index") >= 1.0 || std::time::Instant::now() > deadline {
            break fbody;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        must(&fbody, "paxos_role{role=\"follower\"}"),
        1.0,
        "{fbody}"
    );
    assert_eq!(must(&fbody, "paxos_leader_id"), id, "{fbody}");
    assert!(must(&fbody, "paxos_applied_index") >= 1.0, "{fbody}");

    // Bad requests get their error and the connection is closed.
    let short = Duration::from_secs(10);
    for (request, status) in [
        (&b"garbage\r\n\r\n"[..], "400 Bad Request"),
        (b"\x00\xff\x13 / HTTP/1.1\r\n\r\n", "400 Bad Request"),
        (b"GET /metrics HTTP/9.9\r\n\r\n", "400 Bad Request"),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "405 Method Not Allowed",
        ),
        (b"GET /other HTTP/1.1\r\n\r\n", "404 Not Found"),
        // Just over the bound, so the server has read all of it when it
        // answers (unread bytes would make its close a reset).
        (
            &[b'a'; 8 * 1024 + 1][..],
            "431 Request Header Fields Too Large",
        ),
    ] {
        let text = exchange(leader_metrics, request, short).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{:?} answered {text:?}",
            String::from_utf8_lossy(&request[..request.len().min(40)])
        );
    }
    // A request cut short by the client is a bad request, too.
    {
        let mut s = TcpStream::connect(leader_metrics).await.unwrap();
        s.write_all(b"GET /metrics HT").await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(short, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(out.starts_with(b"HTTP/1.1 400 "), "{out:?}");
    }

    let (closed, out, waited) = stalled.await.unwrap();
    assert!(closed, "an unfinished request was hung on for 20 s");
    assert!(out.is_empty(), "an unfinished request got {out:?}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    // The endpoint still serves after all that.
    let again = scrape(leader_metrics).await;
    assert_eq!(must(&again, "paxos_role{role=\"leader\"}"), 1.0);
}
