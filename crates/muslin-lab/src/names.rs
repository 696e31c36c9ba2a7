//! Names in a lab. Namespaces are `LAB-NODE` and `LAB-NODE-CONTAINER`, so
//! standard tools (`ip netns exec demo-h1-c1 ...`) work on them. Names are
//! lowercase letters and digits, starting with a letter and without dashes,
//! so a namespace name splits back into its parts unambiguously and no lab's
//! names are a prefix of another's.

/// The namespace holding a lab's switches (bridges); not a valid node name.
pub const SWITCH: &str = "switch";
const MAX: usize = 12;

/// Why `name` is not a valid lab, node or container name.
pub fn invalid_name(name: &str) -> Option<String> {
    let ok = name.len() <= MAX
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !ok {
        Some(format!(
            "{name:?} must be 1-{MAX} lowercase letters and digits, starting with a letter"
        ))
    } else if name == SWITCH {
        Some(format!("{name:?} is reserved"))
    } else {
        None
    }
}

pub fn node_ns(lab: &str, node: &str) -> String {
    format!("{lab}-{node}")
}

pub fn container_ns(lab: &str, host: &str, container: &str) -> String {
    format!("{lab}-{host}-{container}")
}

pub fn switch_ns(lab: &str) -> String {
    format!("{lab}-{SWITCH}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(invalid_name("demo").is_none());
        assert!(invalid_name("h12").is_none());
        for bad in [
            "",
            "Demo",
            "1h",
            "h-1",
            "a_b",
            "switch",
            "averyverylongname",
        ] {
            assert!(invalid_name(bad).is_some(), "{bad}");
        }
        assert_eq!(container_ns("demo", "h1", "c1"), "demo-h1-c1");
        assert_eq!(switch_ns("demo"), "demo-switch");
    }
}
