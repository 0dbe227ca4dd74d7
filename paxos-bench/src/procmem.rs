//! Resident memory of a process, from `/proc/<pid>/status` (Linux).

/// Parses the `VmRSS:` line of a `/proc/<pid>/status` text into bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let rest = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim();
    let (n, unit) = rest.split_once(char::is_whitespace)?;
    if unit.trim() != "kB" {
        return None;
    }
    n.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Resident bytes of process `pid`; `None` if it is gone or unreadable.
pub fn rss_bytes(pid: &str) -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Raw bytes of `n` keys `key:0`..`key:<n-1>` with `value_size`-byte values:
/// what the data is worth before any index or overhead.
pub fn raw_key_value_bytes(n: u64, value_size: u64) -> u64 {
    let key_prefix = b"key:".len() as u64;
    // Sum of the decimal lengths of 0..n, by number of digits.
    let (mut digits, mut low, mut high, mut width) = (0u64, 0u64, 10u64, 1u64);
    while low < n {
        digits += (high.min(n) - low) * width;
        low = high;
        high = high.saturating_mul(10);
        width += 1;
    }
    n * (key_prefix + value_size) + digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_parses_in_bytes() {
        let status = "Name:\tpaxos-kv\nVmPeak:\t  999 kB\nVmRSS:\t  123456 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(123_456 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None, "no VmRSS line");
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None, "unknown unit");
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn rss_of_this_process_is_positive() {
        let me = std::process::id().to_string();
        assert!(rss_bytes(&me).is_some_and(|b| b > 0));
        assert_eq!(rss_bytes("not-a-pid"), None);
    }

    #[test]
    fn raw_bytes_count_every_key_digit() {
        assert_eq!(raw_key_value_bytes(0, 100), 0);
        // key:0 .. key:9: 5 bytes each.
        assert_eq!(raw_key_value_bytes(10, 100), 10 * 105);
        // plus key:10 .. key:11: 6 bytes each.
        assert_eq!(raw_key_value_bytes(12, 1), 10 * 6 + 2 * 7);
        let brute: u64 = (0..12_345u64)
            .map(|i| format!("key:{i}").len() as u64 + 100)
            .sum();
        assert_eq!(raw_key_value_bytes(12_345, 100), brute);
    }
}
