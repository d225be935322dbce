//! Memory figures of a process, from the text of `/proc/PID/status`.

/// The value of `field` (such as `VmRSS` or `VmHWM`) in KiB; `None` if the
/// field is missing or not a size in kB.
pub fn kib(status: &str, field: &str) -> Option<u64> {
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// [`kib`] of this process's own status.
pub fn own_kib(field: &str) -> Option<u64> {
    kib(&std::fs::read_to_string("/proc/self/status").ok()?, field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sizes_in_kb_of_exactly_the_named_field() {
        let text = "Name:\tenforcer\nVmHWM:\t   24576 kB\nVmRSS:\t   12288 kB\n";
        assert_eq!(kib(text, "VmRSS"), Some(12288));
        assert_eq!(kib(text, "VmHWM"), Some(24576));
        assert_eq!(kib(text, "VmSwap"), None);
        assert_eq!(kib("VmRSSx:\t2 kB\n", "VmRSS"), None);
        assert_eq!(kib("VmRSS:\t2 MB\n", "VmRSS"), None);
        assert_eq!(kib("VmRSS:\tlots kB\n", "VmRSS"), None);
    }
}
