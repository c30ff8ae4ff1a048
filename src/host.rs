//! This process's host: its name (the pod's name in a cluster).

/// This machine's host name (the pod name in a cluster).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}
