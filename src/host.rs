//! Memory figures of this process and the machine, read from /proc (Linux).

/// Resident set size of this process, in bytes.
pub fn process_rss_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    kib_field(&text, "VmRSS:")
}

/// (total, available) memory of the machine, in bytes.
pub fn machine_memory_bytes() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    (
        kib_field(&text, "MemTotal:"),
        kib_field(&text, "MemAvailable:"),
    )
}

/// A "Name:   1234 kB" line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// "512MB" / "2GB", as the Agent Protocol document prints memory.
pub fn human_bytes(bytes: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    let mb = bytes as f64 / MB;
    if mb < 1024.0 {
        format!("{}MB", mb.round() as u64)
    } else {
        let gb = (mb / 1024.0 * 10.0).round() / 10.0;
        if gb.fract() == 0.0 {
            format!("{}GB", gb as u64)
        } else {
            format!("{gb}GB")
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_matches_the_document() {
        assert_eq!(super::human_bytes(512 * 1024 * 1024), "512MB");
        assert_eq!(super::human_bytes(2 * 1024 * 1024 * 1024), "2GB");
        assert_eq!(super::human_bytes(1536 * 1024 * 1024), "1.5GB");
    }

    #[test]
    fn this_process_uses_some_memory() {
        assert!(super::process_rss_bytes() > 0);
        assert!(super::machine_memory_bytes().0 > 0);
    }
}
