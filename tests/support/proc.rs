//! What a process holds, from /proc: threads, open files, resident memory.

use std::collections::BTreeMap;

/// This process's resident memory, in bytes.
pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Another process's resident memory in KiB (0 once it is gone).
pub fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// This process's threads.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Names of this process's threads, counted.
pub fn thread_names() -> BTreeMap<String, usize> {
    let mut names = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        *names.entry(comm.trim().to_string()).or_default() += 1;
    }
    names
}

/// This process's open file descriptors.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// This process's open file descriptors and what each is, by number: its
/// link target, and for a TCP socket both ends and its state from
/// /proc/net/tcp (for saying which side of a connection a leak is on).
pub fn fd_table() -> BTreeMap<u32, String> {
    let mut tcp = BTreeMap::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 {
                let state = TCP_STATES
                    .get(usize::from_str_radix(f[3], 16).unwrap_or(0))
                    .copied()
                    .unwrap_or("?");
                let ends = format!("{} -> {} {state}", tcp_end(f[1]), tcp_end(f[2]));
                tcp.insert(f[9].to_string(), ends);
            }
        }
    }
    let mut fds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(n) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let target = std::fs::read_link(entry.path())
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "(gone)".into());
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'));
        let what = match (inode, inode.and_then(|i| tcp.get(i))) {
            (_, Some(ends)) => format!("{target} tcp {ends}"),
            (Some(_), None) => format!("{target} (no TCP entry: Unix, or TCP closed)"),
            (None, None) => target,
        };
        fds.insert(n, what);
    }
    fds
}

/// States of /proc/net/tcp, by number.
const TCP_STATES: [&str; 12] = [
    "?",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

/// `0100007F:1F90` (IPv4 only; IPv6 shown raw) as `127.0.0.1:8080`.
fn tcp_end(hex: &str) -> String {
    let Some((addr, port)) = hex.split_once(':') else {
        return hex.to_string();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    match u32::from_str_radix(addr, 16) {
        Ok(a) if addr.len() == 8 => {
            format!("{}:{port}", std::net::Ipv4Addr::from(a.swap_bytes()))
        }
        _ => format!("{addr}:{port}"),
    }
}
