//! A bare paxos-net endpoint driven over stdin/stdout, for multi-process
//! tests (kill -9, restart, partitions) and manual experiments.
//!
//! ```text
//! paxos-net-node --id 1 --certs DIR --listen 127.0.0.1:7001 \
//!     --peer 2=127.0.0.1:7002 [--peer 3=...] [--idle-ms 5000]
//! ```
//!
//! Commands on stdin, one per line:
//! - `send <peer> <text>`: send `text` to `peer`
//! - any fault command (`drop 0.1`, `delay 20ms`, `partition 2 3`, `heal`),
//!   applied to this node's [`FaultyTransport`] wrapper
//! - `stats`: print counters
//!
//! Output on stdout: `ready` once listening, `recv <from> <text>` per
//! message, `applied <command>` once a fault command is in force,
//! `error <text>` for a bad command. Exits when stdin closes.

use paxos_core::ReplicaId;
use paxos_net::{
    Bytes, FaultCommand, FaultyTransport, NodeIdentity, QuicConfig, QuicTransport, Transport,
};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

struct Args {
    id: ReplicaId,
    certs: PathBuf,
    listen: SocketAddr,
    peers: BTreeMap<ReplicaId, SocketAddr>,
    idle: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut id = None;
    let mut certs = None;
    let mut listen = None;
    let mut peers = BTreeMap::new();
    let mut idle = Duration::from_secs(5);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--id" => id = Some(ReplicaId(value.parse().map_err(|_| "bad --id")?)),
            "--certs" => certs = Some(PathBuf::from(value)),
            "--listen" => listen = Some(value.parse().map_err(|_| "bad --listen")?),
            "--peer" => {
                let (peer, addr) = value.split_once('=').ok_or("--peer wants ID=ADDR")?;
                let peer = ReplicaId(peer.parse().map_err(|_| "bad peer id")?);
                peers.insert(peer, addr.parse().map_err(|_| "bad peer address")?);
            }
            "--idle-ms" => {
                idle = Duration::from_millis(value.parse().map_err(|_| "bad --idle-ms")?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        id: id.ok_or("--id is required")?,
        certs: certs.ok_or("--certs is required")?,
        listen: listen.ok_or("--listen is required")?,
        peers,
        idle,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let identity = NodeIdentity::load_from_dir(&args.certs, args.id)?;
    let mut config = QuicConfig::new(identity, args.peers);
    config.idle_timeout = args.idle;
    config.reconnect_initial = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(500);
    let (transport, inbound) = QuicTransport::bind(config, args.listen)?;
    let (transport, mut inbound, faults) =
        FaultyTransport::wrap(transport, inbound, u64::from(args.id.0));

    // Stdin is read on a thread (blocking) and forwarded through a bounded channel.
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    println!("ready");
    loop {
        tokio::select! {
            message = inbound.recv() => {
                let Some((from, message)) = message else { break };
                println!("recv {} {}", from.0, String::from_utf8_lossy(&message));
            }
            line = lines.recv() => {
                let Some(line) = line else { break };
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("send ") {
                    let Some((peer, text)) = rest.split_once(' ') else {
                        println!("error send wants <peer> <text>");
                        continue;
                    };
                    match peer.parse() {
                        Ok(peer) => {
                            if let Err(e) = transport.send(ReplicaId(peer), Bytes::from(text.to_owned())) {
                                println!("error {e}");
                            }
                        }
                        Err(_) => println!("error bad peer id {peer:?}"),
                    }
                } else if line == "stats" {
                    println!("stats {:?} {:?}", transport.stats(), faults.stats());
                } else {
                    match FaultCommand::parse(line) {
                        Ok(command) => {
                            faults.apply(&command);
                            // Lets a driver wait until the fault is in force.
                            println!("applied {line}");
                        }
                        Err(e) => println!("error {e}"),
                    }
                }
            }
        }
    }
    transport.inner().shutdown().await;
    Ok(())
}
