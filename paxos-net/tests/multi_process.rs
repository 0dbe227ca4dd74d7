//! Multi-process fault tests: real `paxos-net-node` processes on loopback,
//! killed with SIGKILL and restarted, partitioned and healed at run time
//! through their stdin.

use paxos_core::ReplicaId;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// One node process, with its stdout read on a thread.
struct Node {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Node {
    fn start(id: u32, certs: &Path, addrs: &[SocketAddr], idle_ms: u64) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_paxos-net-node"));
        command
            .args(["--id", &id.to_string(), "--certs"])
            .arg(certs)
            .args(["--listen", &addrs[id as usize - 1].to_string()])
            .args(["--idle-ms", &idle_ms.to_string()]);
        for (i, addr) in addrs.iter().enumerate() {
            let peer = i as u32 + 1;
            if peer != id {
                command.args(["--peer", &format!("{peer}={addr}")]);
            }
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn paxos-net-node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = Node {
            child,
            stdin,
            lines,
        };
        node.expect_line("ready", WAIT);
        node
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to node");
        self.stdin.flush().unwrap();
    }

    /// Applies a fault command and waits until the node reports it in force,
    /// so what the test sends next is subject to it.
    fn fault(&mut self, line: &str) {
        self.command(line);
        assert!(
            self.wait_line(&format!("applied {line}"), Duration::from_secs(10)),
            "node did not apply {line:?}"
        );
    }

    /// Waits for a line equal to `wanted`; false on timeout.
    fn wait_line(&mut self, wanted: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line == wanted => return true,
                Ok(line) => assert!(!line.starts_with("error"), "node reported {line}"),
                Err(_) => return false,
            }
        }
        false
    }

    fn expect_line(&mut self, wanted: &str, within: Duration) {
        assert!(
            self.wait_line(wanted, within),
            "no {wanted:?} within {within:?}"
        );
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `from` sends `text` to `to_id` every 100 ms until `to` prints it.
fn deliver(from: &mut Node, to: &mut Node, to_id: u32, from_id: u32, text: &str) {
    let deadline = Instant::now() + WAIT;
    let wanted = format!("recv {from_id} {text}");
    loop {
        assert!(Instant::now() < deadline, "{wanted:?} never arrived");
        from.command(&format!("send {to_id} {text}"));
        if to.wait_line(&wanted, Duration::from_millis(100)) {
            return;
        }
    }
}

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    // Bind all first so the ports differ, then release them for the nodes.
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

#[test]
fn sigkilled_node_restarts_and_partitions_switch_at_run_time() {
    let certs = tempfile::tempdir().unwrap();
    paxos_net::generate_cluster(certs.path(), &[ReplicaId(1), ReplicaId(2)]).unwrap();
    let addrs = free_addrs(2);
    // A 60 s idle timeout: reconnecting within WAIT after SIGKILL relies on
    // the restarted process resetting the old connection, not on timeouts.
    let idle_ms = 60_000;
    let mut one = Node::start(1, certs.path(), &addrs, idle_ms);
    let mut two = Node::start(2, certs.path(), &addrs, idle_ms);
    deliver(&mut one, &mut two, 2, 1, "hello");
    deliver(&mut two, &mut one, 1, 2, "hello-back");

    // Kill the accepting side (replica 2) with no chance to say goodbye.
    two.kill();
    let mut two = Node::start(2, certs.path(), &addrs, idle_ms);
    deliver(&mut one, &mut two, 2, 1, "after-kill");
    deliver(&mut two, &mut one, 1, 2, "restarted-says-hi");

    // Kill the dialling side (replica 1) too.
    one.kill();
    let mut one = Node::start(1, certs.path(), &addrs, idle_ms);
    deliver(&mut one, &mut two, 2, 1, "dialer-back");

    // Partition from replica 1's side: nothing crosses either way.
    one.fault("partition 2");
    one.command("send 2 cut-out");
    two.command("send 1 cut-in");
    assert!(!two.wait_line("recv 1 cut-out", Duration::from_millis(300)));
    assert!(!one.wait_line("recv 2 cut-in", Duration::from_millis(300)));
    one.fault("heal");
    deliver(&mut one, &mut two, 2, 1, "healed");
    deliver(&mut two, &mut one, 1, 2, "healed-back");
}
