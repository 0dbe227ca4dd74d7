//! Readable renderings of messages for `-v` traces.

use crate::checker::describe;
use paxos_core::{msg, Message};

/// A compact rendering of a message: decrees are described, not dumped.
pub fn message(msg: &Message) -> String {
    let entries = |list: &[paxos_core::Accepted]| {
        list.iter()
            .map(|a| format!("{}@{}={}", a.slot, a.ballot, describe(&a.value)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match msg {
        Message::Accept(msg::Accept { ballot, slot, value, commit_index }) => {
            format!("Accept {{ ballot {ballot}, slot {slot}, value {}, commit {commit_index} }}", describe(value))
        }
        Message::Promise(msg::Promise { ballot, from_slot, commit_index, log_start, entries: e, next_from }) => format!(
            "Promise {{ ballot {ballot}, from {from_slot}, commit {commit_index}, log_start {log_start}, entries [{}], next {next_from:?} }}",
            entries(e)
        ),
        Message::Decrees(msg::Decrees { from_slot, commit_index, log_start, decrees }) => format!(
            "Decrees {{ from {from_slot}, commit {commit_index}, log_start {log_start}, decrees [{}] }}",
            entries(decrees)
        ),
        other => format!("{other:?}"),
    }
}
