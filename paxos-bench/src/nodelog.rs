//! Reads the events the scale benchmark needs out of a node's log (the
//! `tracing` fmt lines a `paxos-kv node` writes to stderr): checkpoints
//! with their duration, checkpoint transfers with their size and rate,
//! leader changes, and start-up recovery. Lines carry a UTC RFC 3339
//! timestamp, which puts them on the benchmark's wall clock; colour
//! escapes, if the node wrote any, are stripped first.

/// One event of interest, with its wall-clock time (microseconds since the
/// Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// When it was logged, microseconds since the Unix epoch.
    pub at_unix_us: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The events the benchmark reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `checkpoint durable`: a checkpoint of `slot` finished, `duration_ms`
    /// after it was asked for.
    CheckpointDurable {
        /// Its slot.
        slot: u64,
        /// From the request to durable, milliseconds.
        duration_ms: u64,
    },
    /// `checkpoint received from a peer`: a transfer of `bytes` finished.
    CheckpointReceived {
        /// Its slot.
        slot: u64,
        /// Checkpoint data bytes.
        bytes: u64,
        /// From the request to the last chunk durable, milliseconds.
        duration_ms: u64,
    },
    /// `installed a checkpoint from a peer`.
    CheckpointInstalled {
        /// Its slot.
        slot: u64,
    },
    /// `primary status changed`: this node became (`true`) or stopped
    /// being leader.
    PrimaryChanged {
        /// Whether it leads now.
        leader: bool,
    },
    /// `recovered`: the node opened its storage at start-up.
    Recovered {
        /// The checkpoint it restored (0: none).
        checkpoint: u64,
        /// Accepted decrees in its log above the checkpoint.
        accepted: u64,
    },
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The value of `name=` among a line's fields (`name=value`, space separated).
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| {
        w.strip_prefix(name)
            .and_then(|r| r.strip_prefix('='))
            .map(|v| v.trim_matches('"'))
    })
}

fn num(line: &str, name: &str) -> Option<u64> {
    field(line, name)?.parse().ok()
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` into microseconds since the epoch.
pub fn parse_rfc3339_utc(ts: &str) -> Option<u64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || s > 60 {
        return None;
    }
    // Fractional seconds to microseconds: pad or cut to 6 digits.
    let micros: u64 = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{frac:0<6}")[..6].parse().ok()?
    };
    let days = days_from_civil(y, m, day);
    let secs = u64::try_from(days).ok()? * 86_400 + h * 3600 + min * 60 + s;
    Some(secs * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses one log line; `None` for lines the benchmark does not use.
pub fn parse_line(raw: &str) -> Option<Event> {
    let line = strip_ansi(raw);
    let at_unix_us = parse_rfc3339_utc(line.split_whitespace().next()?)?;
    let kind = if line.contains("checkpoint durable") {
        EventKind::CheckpointDurable {
            slot: num(&line, "slot")?,
            duration_ms: num(&line, "duration_ms")?,
        }
    } else if line.contains("checkpoint received from a peer") {
        EventKind::CheckpointReceived {
            slot: num(&line, "slot")?,
            bytes: num(&line, "bytes")?,
            duration_ms: num(&line, "duration_ms")?,
        }
    } else if line.contains("installed a checkpoint from a peer") {
        EventKind::CheckpointInstalled {
            slot: num(&line, "slot")?,
        }
    } else if line.contains("primary status changed") {
        EventKind::PrimaryChanged {
            leader: field(&line, "leader")? == "true",
        }
    } else if line.contains(" recovered") && field(&line, "checkpoint").is_some() {
        EventKind::Recovered {
            checkpoint: num(&line, "checkpoint")?,
            accepted: num(&line, "accepted")?,
        }
    } else {
        return None;
    };
    Some(Event { at_unix_us, kind })
}

/// Every event of a whole log, in order.
pub fn parse_log(text: &str) -> Vec<Event> {
    text.lines().filter_map(parse_line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_convert_to_unix_micros() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2000-03-01T00:00:01.5Z"),
            Some((951_868_800 + 1) * 1_000_000 + 500_000)
        );
        assert_eq!(
            parse_rfc3339_utc("2026-12-06T21:45:26.123456789Z"),
            Some(1_796_593_526_123_456)
        );
        assert_eq!(parse_rfc3339_utc("2026-13-06T21:45:26Z"), None);
        assert_eq!(parse_rfc3339_utc("2026-12-06 21:45:26"), None);
        assert_eq!(parse_rfc3339_utc("2026-12-06T21:45:26.1x3Z"), None);
    }

    #[test]
    fn checkpoint_and_transfer_lines_parse_with_or_without_colour() {
        let plain = "2026-12-06T21:45:26.000001Z  INFO paxos_node::node: checkpoint durable slot=4200 compacted_through=3000 duration_ms=812";
        assert_eq!(
            parse_line(plain),
            Some(Event {
                at_unix_us: 1_796_593_526_000_001,
                kind: EventKind::CheckpointDurable {
                    slot: 4200,
                    duration_ms: 812
                }
            })
        );
        let coloured = "\u{1b}[2m2026-12-06T21:45:26.000001Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mpaxos_node::node\u{1b}[0m\u{1b}[2m:\u{1b}[0m checkpoint received from a peer \u{1b}[3mslot\u{1b}[0m\u{1b}[2m=\u{1b}[0m77 \u{1b}[3mpeer\u{1b}[0m\u{1b}[2m=\u{1b}[0m1 \u{1b}[3mbytes\u{1b}[0m\u{1b}[2m=\u{1b}[0m1000000 \u{1b}[3mduration_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m5";
        assert_eq!(
            parse_line(coloured).map(|e| e.kind),
            Some(EventKind::CheckpointReceived {
                slot: 77,
                bytes: 1_000_000,
                duration_ms: 5
            })
        );
    }

    #[test]
    fn leader_and_recovery_lines_parse_and_others_are_skipped() {
        let log = "\
2026-12-06T21:45:26Z  INFO paxos_node::node: primary status changed id=1 leader=true ballot=3.1
2026-12-06T21:45:27Z  INFO paxos_kv::launch: recovered id=2 checkpoint=900 commit_index=950 accepted=51
2026-12-06T21:45:28Z  INFO paxos_node::node: installed a checkpoint from a peer; the core restarted from it slot=12
2026-12-06T21:45:29Z  WARN paxos_node::node: checkpoint durable slot=oops duration_ms=1
not a log line at all
2026-12-06T21:45:30Z  INFO paxos_kv::server: listening addr=127.0.0.1:1
";
        let kinds: Vec<EventKind> = parse_log(log).into_iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::PrimaryChanged { leader: true },
                EventKind::Recovered {
                    checkpoint: 900,
                    accepted: 51
                },
                EventKind::CheckpointInstalled { slot: 12 },
            ]
        );
    }
}
