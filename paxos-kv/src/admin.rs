//! Operator commands on the client port, and the CLI side that sends them.
//!
//! ```text
//! PAXOS.ADDNODE <id> <peer-addr> <client-addr>   leader; replies once <id> is a voter
//! PAXOS.REMOVENODE <id>                          leader (may be <id> itself); replies once it is out
//! PAXOS.TRANSFERLEADER [<id>]                    leader hands over to <id>, or to the most caught-up voter
//! PAXOS.ABANDONCHANGE                            leader gives up the membership change in progress
//! PAXOS.MEMBERS                                  any node: membership and address book
//! ```
//!
//! Commands that need the leader answer `-MOVED 0 <leader client addr>`
//! elsewhere, like writes. `ADDNODE` first replicates the new node's
//! addresses through the log (see [`crate::membership`]), so every replica
//! can connect to it, then asks the core to change the configuration: the
//! node joins as a learner, catches up, and is promoted to voter. Both
//! steps are idempotent, so an `ADDNODE` that timed out or lost its leader
//! can simply be sent again.

use crate::client::{moved_to, Client};
use crate::membership::{membership_text, MemberAddrs};
use crate::node::{error_reply, Replica, ReplicateError};
use crate::resp::{self, Frame};
use bytes::{Bytes, BytesMut};
use paxos_core::{Membership, ProposeError, ReplicaId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long `ADDNODE` waits for the new node to become a voter, and
/// `REMOVENODE` for the removal to take effect.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a waiting command looks at the published membership.
const POLL: Duration = Duration::from_millis(25);
/// How long a command still waits for its change after this node stopped
/// leading (the change may have been chosen just before).
const LOST_LEADER_GRACE: Duration = Duration::from_secs(2);

/// A parsed operator command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Register `id`'s addresses and make it a voter.
    AddNode {
        /// The new replica.
        id: ReplicaId,
        /// Where it listens.
        addrs: MemberAddrs,
    },
    /// Remove `id` (voter or learner).
    RemoveNode {
        /// The replica to remove.
        id: ReplicaId,
    },
    /// The leader hands over (to `to`, or to its most caught-up voter) and
    /// steps down.
    TransferLeader {
        /// The successor, if the operator names one.
        to: Option<ReplicaId>,
    },
    /// The leader gives up the membership change in progress.
    AbandonChange,
    /// Report the membership and the address book.
    Members,
}

/// Why a command was refused before doing anything. `Display` is the RESP
/// error line (without the leading `-`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// Not a `PAXOS.` command this node knows.
    #[error("ERR unknown command '{0}' (PAXOS.ADDNODE, PAXOS.REMOVENODE, PAXOS.TRANSFERLEADER, PAXOS.ABANDONCHANGE, PAXOS.MEMBERS)")]
    Unknown(String),
    /// Wrong argument count.
    #[error("ERR wrong number of arguments: usage {0}")]
    Usage(&'static str),
    /// A replica id that is not a positive 32-bit integer.
    #[error("ERR invalid replica id '{0}': expected an integer in 1..=4294967295")]
    BadId(String),
    /// An address that is not `ip:port`.
    #[error("ERR invalid {what} '{text}': expected ip:port")]
    BadAddr {
        /// Which address.
        what: &'static str,
        /// What was sent.
        text: String,
    },
    /// The same address for both endpoints.
    #[error("ERR peer and client addresses must differ")]
    SameAddr,
}

/// Whether `name` is an operator command (`PAXOS.` prefix).
pub fn is_admin(name: &[u8]) -> bool {
    name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"PAXOS.")
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(&b[..b.len().min(128)]).into_owned()
}

fn parse_id(b: &Bytes) -> Result<ReplicaId, AdminError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&n| n != 0)
        .map(ReplicaId)
        .ok_or_else(|| AdminError::BadId(text(b)))
}

fn parse_addr(b: &Bytes, what: &'static str) -> Result<SocketAddr, AdminError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AdminError::BadAddr {
            what,
            text: text(b),
        })
}

/// Parses an operator command (`args[0]` is the name, any case).
pub fn parse(args: &[Bytes]) -> Result<AdminCommand, AdminError> {
    let Some((name, rest)) = args.split_first() else {
        return Err(AdminError::Unknown(String::new()));
    };
    let upper = text(name).to_ascii_uppercase();
    match upper.as_str() {
        "PAXOS.ADDNODE" => {
            let [id, peer, client] = rest else {
                return Err(AdminError::Usage(
                    "PAXOS.ADDNODE <id> <peer-addr> <client-addr>",
                ));
            };
            let addrs = MemberAddrs {
                peer: parse_addr(peer, "peer address")?,
                client: parse_addr(client, "client address")?,
            };
            if addrs.peer == addrs.client {
                return Err(AdminError::SameAddr);
            }
            Ok(AdminCommand::AddNode {
                id: parse_id(id)?,
                addrs,
            })
        }
        "PAXOS.REMOVENODE" => {
            let [id] = rest else {
                return Err(AdminError::Usage("PAXOS.REMOVENODE <id>"));
            };
            Ok(AdminCommand::RemoveNode { id: parse_id(id)? })
        }
        "PAXOS.TRANSFERLEADER" => match rest {
            [] => Ok(AdminCommand::TransferLeader { to: None }),
            [id] => Ok(AdminCommand::TransferLeader {
                to: Some(parse_id(id)?),
            }),
            _ => Err(AdminError::Usage("PAXOS.TRANSFERLEADER [<id>]")),
        },
        "PAXOS.ABANDONCHANGE" => match rest {
            [] => Ok(AdminCommand::AbandonChange),
            _ => Err(AdminError::Usage("PAXOS.ABANDONCHANGE")),
        },
        "PAXOS.MEMBERS" => match rest {
            [] => Ok(AdminCommand::Members),
            _ => Err(AdminError::Usage("PAXOS.MEMBERS")),
        },
        _ => Err(AdminError::Unknown(text(name))),
    }
}

fn error(text: &str) -> Bytes {
    let mut out = BytesMut::new();
    resp::write_error(&mut out, text.as_bytes());
    out.freeze()
}

fn ok() -> Bytes {
    Bytes::from_static(b"+OK\r\n")
}

/// The reply to a request that needs the leader, sent to a follower.
fn not_leader(replica: &Replica, leader: Option<ReplicaId>) -> Bytes {
    let view = replica.cluster();
    let mut out = BytesMut::new();
    error_reply(
        &ReplicateError::NotPrimary { leader },
        |id| view.client_addr(id).map(|a| a.to_string()),
        &mut out,
    );
    out.freeze()
}

fn refused(replica: &Replica, e: ProposeError) -> Bytes {
    match e {
        ProposeError::NotLeader { leader } => not_leader(replica, leader),
        ProposeError::ConfigChangeInFlight => error(
            "TRYAGAIN a configuration change is in flight; retry once it completed (see PAXOS.MEMBERS)",
        ),
        other => error(&format!("ERR configuration change refused: {other}")),
    }
}

/// Runs one operator command against the local replica and returns the
/// RESP reply. Never panics; waits at most `timeout` for a change.
pub async fn execute(cmd: AdminCommand, replica: Replica, timeout: Duration) -> Bytes {
    match cmd {
        AdminCommand::Members => members_reply(&replica),
        AdminCommand::TransferLeader { to } => {
            let result = match to {
                Some(id) => replica.relinquish_primary_to(id).await,
                None => replica.relinquish_primary().await,
            };
            match result {
                Ok(()) => ok(),
                Err(ReplicateError::NotPrimary { leader }) => not_leader(&replica, leader),
                Err(_) if to.is_some() => error(&format!(
                    "ERR replica {} cannot take over: it must be a voter that may lead and was heard from recently (see INFO peers)",
                    to.map_or(0, |r| r.0)
                )),
                Err(e) => error(&e.to_string()),
            }
        }
        AdminCommand::AbandonChange => {
            if !replica.is_primary() {
                return not_leader(&replica, replica.status().leader);
            }
            match replica.abandon_configuration_change().await {
                Ok(Some(_)) => ok(),
                Ok(None) => error("ERR no membership change in progress on this leader"),
                Err(e) => error(&e.to_string()),
            }
        }
        AdminCommand::AddNode { id, addrs } => add_node(&replica, id, addrs, timeout).await,
        AdminCommand::RemoveNode { id } => remove_node(&replica, id, timeout).await,
    }
}

async fn add_node(
    replica: &Replica,
    id: ReplicaId,
    addrs: MemberAddrs,
    timeout: Duration,
) -> Bytes {
    if !replica.is_primary() {
        return not_leader(replica, replica.status().leader);
    }
    let view = replica.cluster();
    let clashes = |a: &MemberAddrs| {
        [a.peer, a.client].contains(&addrs.peer) || [a.peer, a.client].contains(&addrs.client)
    };
    if let Some((other, _)) = view
        .book
        .iter()
        .find(|(other, a)| **other != id && view.membership.contains(**other) && clashes(a))
    {
        return error(&format!(
            "ERR address already used by replica {} (see PAXOS.MEMBERS)",
            other.0
        ));
    }
    if view.membership.is_voter(id) && view.book.get(&id) == Some(&addrs) {
        return ok();
    }
    if view.membership.is_voter(id) {
        return error(&format!(
            "ERR replica {} is already a voter at other addresses: remove it first",
            id.0
        ));
    }
    // 1. Every replica learns where the node listens (through the log).
    match replica.register_member(id, addrs).await {
        Ok(Ok(())) => {}
        Ok(Err(refused)) => return error(&format!("ERR {refused}")),
        Err(ReplicateError::NotPrimary { leader }) => return not_leader(replica, leader),
        Err(e) => return error(&e.to_string()),
    }
    // 2. Learner first, then voter (the core drives the promotion).
    let current = replica.cluster().membership.clone();
    let mut voters = current.voters.clone();
    voters.push(id);
    let target = Membership {
        learners: current
            .learners
            .iter()
            .copied()
            .filter(|&r| r != id)
            .collect(),
        ..Membership::with_voters(voters)
    };
    match replica.change_configuration(target).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return refused(replica, e),
        Err(e) => return error(&e.to_string()),
    }
    wait_for(replica, timeout, |m| m.is_voter(id), || {
        format!(
            "ERR TIMEOUT replica {} is not a voter after {}s: it stays a learner until it caught up (is it running, with this cluster's CA, reachable at {}?); the change stays pending on this leader, or send PAXOS.ADDNODE again",
            id.0,
            timeout.as_secs(),
            addrs.peer
        )
    })
    .await
}

async fn remove_node(replica: &Replica, id: ReplicaId, timeout: Duration) -> Bytes {
    if !replica.is_primary() {
        return not_leader(replica, replica.status().leader);
    }
    let current = replica.cluster().membership.clone();
    if !current.contains(id) {
        return error(&format!(
            "ERR replica {} is not a member ({})",
            id.0,
            membership_text(&current)
        ));
    }
    let target = Membership {
        voters: current
            .voters
            .iter()
            .copied()
            .filter(|&r| r != id)
            .collect(),
        learners: current
            .learners
            .iter()
            .copied()
            .filter(|&r| r != id)
            .collect(),
    };
    if target.voters.is_empty() {
        return error("ERR cannot remove the last voter");
    }
    match replica.change_configuration(target).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return refused(replica, e),
        Err(e) => return error(&e.to_string()),
    }
    wait_for(
        replica,
        timeout,
        |m| !m.contains(id),
        || {
            format!(
                "ERR TIMEOUT replica {} is still a member after {}s (see PAXOS.MEMBERS)",
                id.0,
                timeout.as_secs()
            )
        },
    )
    .await
}

/// Waits until the membership in force here satisfies `done`.
async fn wait_for(
    replica: &Replica,
    timeout: Duration,
    done: impl Fn(&Membership) -> bool,
    timed_out: impl Fn() -> String,
) -> Bytes {
    let deadline = Instant::now() + timeout;
    let mut lost_leader: Option<Instant> = None;
    loop {
        if done(&replica.cluster().membership) {
            return ok();
        }
        if !replica.is_primary() {
            // A removed leader steps down right after its removal is chosen;
            // the published membership may trail the role by a moment.
            let since = *lost_leader.get_or_insert_with(Instant::now);
            if since.elapsed() > LOST_LEADER_GRACE {
                return error(
                    "UNKNOWN this node stopped leading before the change took effect; it may or may not complete (see PAXOS.MEMBERS, and retry)",
                );
            }
        }
        if Instant::now() >= deadline {
            return error(&timed_out());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn members_reply(replica: &Replica) -> Bytes {
    use std::fmt::Write;
    let view = replica.cluster();
    let status = replica.status();
    let mut s = String::new();
    let _ = write!(
        s,
        "membership_slot:{}\r\nmembership:{}\r\npending:{}\r\nleader:{}\r\n",
        view.membership_slot,
        membership_text(&view.membership),
        view.pending.as_ref().map_or("none".into(), membership_text),
        status.leader.map_or(0, |l| l.0),
    );
    for id in view.membership.all() {
        let role = if view.membership.is_voter(id) {
            "voter"
        } else {
            "learner"
        };
        let (peer, client) = view
            .book
            .get(&id)
            .map_or(("?".to_string(), "?".to_string()), |a| {
                (a.peer.to_string(), a.client.to_string())
            });
        let _ = write!(s, "member:{} {} {} {}\r\n", id.0, role, peer, client);
    }
    let mut out = BytesMut::new();
    resp::write_bulk(&mut out, Some(s.as_bytes()));
    out.freeze()
}

/// Sends one operator command to the node at `addr`, following `-MOVED`
/// redirects to the leader, and returns the reply text (`+OK`, or the bulk
/// text). An error reply becomes an `Err` with its text.
pub async fn call(addr: SocketAddr, args: &[&[u8]], timeout: Duration) -> anyhow::Result<String> {
    let mut addr = addr;
    for _ in 0..8 {
        // The timeout covers connecting and the whole command (an ADDNODE
        // waits for the new node to catch up).
        let mut c = Client::connect(addr, timeout)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
        let reply = c
            .cmd(args)
            .await
            .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        if let Some(to) = moved_to(&reply) {
            addr = to;
            continue;
        }
        return match reply {
            Frame::Simple(s) => Ok(String::from_utf8_lossy(&s).into_owned()),
            Frame::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Frame::Error(e) => {
                if e.starts_with(b"CLUSTERDOWN") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                anyhow::bail!("{addr}: {}", String::from_utf8_lossy(&e))
            }
            other => anyhow::bail!("{addr}: unexpected reply {other:?}"),
        };
    }
    anyhow::bail!("no leader found (too many redirects or no leader elected)")
}

/// Writes the config (`node<id>.toml`) and a certificate signed by the
/// cluster CA for a new replica `id`, into a directory made by `paxos-kv
/// init`. Its `members` are the union of the members of the configs found
/// there (whom it contacts first), with itself as a learner. `addrs`
/// defaults to free loopback ports. Refuses if `id`'s data directory holds
/// data: a replica that was removed rejoins with empty state.
pub fn provision_node(
    dir: &std::path::Path,
    id: u32,
    addrs: Option<crate::launch::NodeAddrs>,
) -> anyhow::Result<(std::path::PathBuf, crate::launch::NodeAddrs)> {
    use crate::config::{Member, NodeConfig, TlsPaths};
    use anyhow::Context;
    anyhow::ensure!(id != 0, "replica ids are positive");
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{} (run paxos-kv init first)", dir.display()))?;
    let mut configs = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("node") && name.ends_with(".toml") && name != format!("node{id}.toml") {
            configs.push(NodeConfig::load(&path)?);
        }
    }
    let template = configs
        .first()
        .with_context(|| {
            format!(
                "no node*.toml in {} (run paxos-kv init first)",
                dir.display()
            )
        })?
        .clone();
    let data_dir = dir.join(format!("node{id}"));
    if std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} holds data: a removed replica rejoins with empty state; delete it first",
            data_dir.display()
        );
    }
    let mut members: std::collections::BTreeMap<u32, Member> = std::collections::BTreeMap::new();
    for c in &configs {
        for m in &c.members {
            if m.id != id {
                members.insert(
                    m.id,
                    Member {
                        learner: false,
                        ..m.clone()
                    },
                );
            }
        }
    }
    let addrs = match addrs {
        Some(a) => a,
        None => crate::launch::free_loopback_addrs(1)?
            .pop()
            .context("no free port")?,
    };
    if let Some(m) = members.values().find(|m| {
        [m.peer_addr, m.client_addr].contains(&addrs.peer)
            || [m.peer_addr, m.client_addr].contains(&addrs.client)
    }) {
        anyhow::bail!(
            "an address of replica {} is the same as the new one's",
            m.id
        );
    }
    members.insert(
        id,
        Member {
            id,
            peer_addr: addrs.peer,
            client_addr: addrs.client,
            learner: true,
        },
    );
    let cert_dir = template
        .tls
        .ca
        .parent()
        .context("the CA certificate path has no directory")?;
    let files = paxos_net::certs::add_node(cert_dir, ReplicaId(id)).with_context(|| {
        format!(
            "issuing a certificate with the CA in {}",
            cert_dir.display()
        )
    })?;
    let config = NodeConfig {
        id,
        storage: template.storage,
        data_dir,
        peer_addr: addrs.peer,
        client_addr: addrs.client,
        metrics_addr: addrs.metrics,
        tls: TlsPaths {
            cert: files.cert,
            key: files.key,
            ca: template.tls.ca.clone(),
        },
        members: members.into_values().collect(),
        tuning: template.tuning.clone(),
        recovery: template.recovery.clone(),
    };
    let path = dir.join(format!("node{id}.toml"));
    std::fs::write(&path, config.to_toml())
        .with_context(|| format!("writing {}", path.display()))?;
    NodeConfig::load(&path)?;
    Ok((path, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::tests::args;

    fn err(parts: &[&str]) -> String {
        parse(&args(parts)).unwrap_err().to_string()
    }

    #[test]
    fn commands_parse() {
        assert!(is_admin(b"paxos.members"));
        assert!(!is_admin(b"PAXOS"));
        assert!(!is_admin(b"GET"));
        assert_eq!(
            parse(&args(&[
                "paxos.addnode",
                "4",
                "127.0.0.1:7004",
                "127.0.0.1:6004"
            ])),
            Ok(AdminCommand::AddNode {
                id: ReplicaId(4),
                addrs: MemberAddrs {
                    peer: "127.0.0.1:7004".parse().unwrap(),
                    client: "127.0.0.1:6004".parse().unwrap(),
                },
            })
        );
        assert_eq!(
            parse(&args(&["PAXOS.REMOVENODE", "2"])),
            Ok(AdminCommand::RemoveNode { id: ReplicaId(2) })
        );
        assert_eq!(
            parse(&args(&["Paxos.TransferLeader"])),
            Ok(AdminCommand::TransferLeader { to: None })
        );
        assert_eq!(
            parse(&args(&["PAXOS.TRANSFERLEADER", "2"])),
            Ok(AdminCommand::TransferLeader {
                to: Some(ReplicaId(2))
            })
        );
        assert_eq!(
            parse(&args(&["paxos.abandonchange"])),
            Ok(AdminCommand::AbandonChange)
        );
        assert_eq!(parse(&args(&["PAXOS.MEMBERS"])), Ok(AdminCommand::Members));
    }

    #[test]
    fn bad_input_gets_clear_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["PAXOS.FLY"], "ERR unknown command 'PAXOS.FLY'"),
            (&["PAXOS.ADDNODE", "4"], "usage PAXOS.ADDNODE <id>"),
            (
                &["PAXOS.ADDNODE", "0", "127.0.0.1:1", "127.0.0.1:2"],
                "invalid replica id '0'",
            ),
            (
                &["PAXOS.ADDNODE", "x", "127.0.0.1:1", "127.0.0.1:2"],
                "invalid replica id 'x'",
            ),
            (
                &["PAXOS.ADDNODE", "-3", "127.0.0.1:1", "127.0.0.1:2"],
                "invalid replica id '-3'",
            ),
            (
                &["PAXOS.ADDNODE", "99999999999", "127.0.0.1:1", "127.0.0.1:2"],
                "invalid replica id",
            ),
            (
                &["PAXOS.ADDNODE", "4", "localhost", "127.0.0.1:2"],
                "invalid peer address 'localhost': expected ip:port",
            ),
            (
                &["PAXOS.ADDNODE", "4", "127.0.0.1:1", "127.0.0.1:99999"],
                "invalid client address '127.0.0.1:99999'",
            ),
            (
                &["PAXOS.ADDNODE", "4", "127.0.0.1:1", "127.0.0.1:1"],
                "peer and client addresses must differ",
            ),
            (&["PAXOS.REMOVENODE"], "usage PAXOS.REMOVENODE <id>"),
            (&["PAXOS.REMOVENODE", "1", "2"], "usage PAXOS.REMOVENODE"),
            (
                &["PAXOS.TRANSFERLEADER", "1", "2"],
                "usage PAXOS.TRANSFERLEADER",
            ),
            (&["PAXOS.TRANSFERLEADER", "x"], "invalid replica id 'x'"),
            (&["PAXOS.ABANDONCHANGE", "1"], "usage PAXOS.ABANDONCHANGE"),
            (&["PAXOS.MEMBERS", "x"], "usage PAXOS.MEMBERS"),
        ];
        for (input, expect) in cases {
            let got = err(input);
            assert!(got.contains(expect), "{input:?}: got {got}");
            assert!(got.starts_with("ERR "), "{input:?}: {got}");
        }
        // Arbitrary bytes never panic.
        let junk = vec![
            Bytes::from_static(b"PAXOS.ADDNODE"),
            Bytes::from_static(&[0xff, 0xfe]),
            Bytes::from(vec![b'1'; 10_000]),
            Bytes::new(),
        ];
        assert!(parse(&junk).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn a_new_node_gets_a_config_and_a_certificate_of_the_cluster_ca() {
        use crate::config::{NodeConfig, StorageKind, Tuning};
        let dir = tempfile::tempdir().unwrap();
        let addrs = crate::launch::free_loopback_addrs(3).unwrap();
        crate::launch::init_cluster(dir.path(), &addrs, StorageKind::File, &Tuning::default())
            .unwrap();
        let (path, _) = provision_node(dir.path(), 4, None).unwrap();
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(c.id, 4);
        let m = c.initial_membership();
        assert_eq!(m.voters, vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]);
        assert_eq!(m.learners, vec![ReplicaId(4)]);
        // Its certificate verifies against the cluster CA.
        paxos_net::NodeIdentity::load(c.replica_id(), &c.tls.cert, &c.tls.key, &c.tls.ca)
            .unwrap()
            .check()
            .unwrap();
        // A data directory with data is refused.
        std::fs::create_dir_all(c.data_dir.join("log")).unwrap();
        let err = provision_node(dir.path(), 4, None).unwrap_err().to_string();
        assert!(err.contains("rejoins with empty state"), "{err}");
        assert!(provision_node(&dir.path().join("nope"), 5, None).is_err());
    }
}
