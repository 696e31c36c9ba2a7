//! The key files both managers read: `[section]` headers and `key=value`
//! lines, `#` and `;` comments. Enough to find the few keys the check
//! needs; values keep their inner spaces.

/// One `key=value` line, in file order, with the section it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub section: &'a str,
    pub key: &'a str,
    pub value: &'a str,
}

pub fn entries(text: &str) -> Vec<Entry<'_>> {
    let mut section = "";
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push(Entry {
                section,
                key: k.trim(),
                value: v.trim(),
            });
        }
    }
    out
}

/// A boolean as both managers spell it.
pub fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "1" | "yes" | "true" | "on" | "y" | "t"
    )
}

/// The file name of `path`, by which both managers order and shadow files.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_keys_and_comments() {
        let e = entries("# c\n[keyfile]\n unmanaged-devices = interface-name:msl*\n; x=y\n[main]\nplugins=ifupdown,keyfile\n");
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].section, e[0].key, e[0].value),
            ("keyfile", "unmanaged-devices", "interface-name:msl*")
        );
        assert_eq!(e[1].section, "main");
        assert!(truthy("Yes") && !truthy("0"));
        assert_eq!(
            basename("/etc/systemd/network/10-a.network"),
            "10-a.network"
        );
    }
}
