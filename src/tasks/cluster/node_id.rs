//! A node's name in the cluster (`--node-id` / AGENTD_NODE_ID): the key of
//! its row, of the runs it holds, and the name of its own parts of a shared
//! data directory (`run/<node id>/`, `tmp/<node id>/`).

use std::net::SocketAddr;

/// Host name + port: unique per machine and port, and the same again when
/// the node restarts there (so it takes back what its last life left).
pub fn default_node_id(listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let id: String = host
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .collect();
    format!("{id}:{}", listen.port())
}

/// Checks a configured node id: it names directories, so it is 1 to 100 of
/// `A-Z a-z 0-9 . _ : -`, and not `.` or `..`.
pub fn validate(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 100 {
        return Err(format!(
            "--node-id must be 1 to 100 characters, got {} ({id:?})",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "--node-id {id:?} contains {c:?}: use letters, digits, '.', '_', ':' and '-'"
        ));
    }
    if id == "." || id == ".." {
        return Err(format!("--node-id {id:?} is not a usable name"));
    }
    Ok(())
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_host_and_port_and_valid() {
        let id = default_node_id("127.0.0.1:50051".parse().unwrap());
        assert!(id.ends_with(":50051"), "{id}");
        assert_eq!(validate(&id), Ok(()));
    }

    #[test]
    fn ids_that_cannot_name_a_directory_are_refused_with_the_reason() {
        for good in ["n1", "node-2.example:50051", "a_b"] {
            assert_eq!(validate(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("", "1 to 100"),
            ("../etc", "contains '/'"),
            ("a b", "contains ' '"),
            ("..", "not a usable name"),
        ] {
            let e = validate(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(validate(&"x".repeat(101)).is_err());
    }
}
