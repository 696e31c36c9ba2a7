//! Whether systemd-networkd would configure one of our interfaces: the
//! first `.network` file (by file name; `/etc` hides `/run` hides
//! `/usr/lib`) whose `[Match]` fits an interface applies to it, unless
//! that file says `[Link] Unmanaged=yes`.

use super::ini::{basename, entries, truthy};
use super::{glob, Iface};

/// The `.network` files in the order networkd tries them.
fn ordered(files: &[(String, String)]) -> Vec<&(String, String)> {
    let rank = |p: &str| -> Option<u8> {
        if !p.ends_with(".network") || !p.contains("/systemd/network/") {
            None
        } else if p.starts_with("/etc/") {
            Some(0)
        } else if p.starts_with("/run/") {
            Some(1)
        } else {
            Some(2)
        }
    };
    let mut best: std::collections::BTreeMap<&str, (u8, &(String, String))> = Default::default();
    for f in files {
        let Some(r) = rank(&f.0) else { continue };
        let e = best.entry(basename(&f.0)).or_insert((r, f));
        if r < e.0 {
            *e = (r, f);
        }
    }
    best.into_values().map(|(_, f)| f).collect()
}

/// A `[Match]` list key: space-separated words, accumulated over lines,
/// reset by an empty value; a leading `!` inverts the whole list.
#[derive(Default)]
struct List {
    words: Vec<String>,
}

impl List {
    fn add(&mut self, v: &str) {
        if v.is_empty() {
            self.words.clear();
        } else {
            self.words.extend(v.split_whitespace().map(str::to_string));
        }
    }

    fn matches(&self, f: impl Fn(&str) -> bool) -> bool {
        let mut inverted = false;
        let words: Vec<&str> = self
            .words
            .iter()
            .enumerate()
            .map(|(i, w)| match w.strip_prefix('!') {
                Some(rest) if i == 0 => {
                    inverted = true;
                    rest
                }
                _ => w.as_str(),
            })
            .collect();
        words.iter().any(|w| f(w)) != inverted
    }
}

/// Whether the file's `[Match]` fits the interface. Conditions other than
/// `Name=` and `Kind=` (MAC, driver, path...) cannot fit a device created
/// later with random properties, so a file with one never counts.
fn fits(text: &str, d: &Iface) -> bool {
    let (mut name, mut kind) = (List::default(), List::default());
    for e in entries(text).iter().filter(|e| e.section == "Match") {
        match e.key {
            "Name" => name.add(e.value),
            "Kind" => kind.add(e.value),
            _ => return false,
        }
    }
    // No condition at all matches every interface (networkd warns, and
    // applies it).
    let name_ok = name.words.is_empty() || name.matches(|p| glob::matches(p, &d.name));
    let kind_ok = kind.words.is_empty() || kind.matches(|k| k == d.kind);
    name_ok && kind_ok
}

fn leaves_alone(text: &str) -> bool {
    entries(text)
        .iter()
        .rev()
        .find(|e| e.section == "Link" && e.key == "Unmanaged")
        .is_some_and(|e| truthy(e.value))
}

/// For each of `ours` that networkd would configure, the file that does.
pub fn managed<'a>(files: &'a [(String, String)], ours: &'a [Iface]) -> Vec<(&'a Iface, &'a str)> {
    let files = ordered(files);
    ours.iter()
        .filter_map(|d| {
            let (path, text) = files.iter().find(|(_, t)| fits(t, d))?;
            (!leaves_alone(text)).then_some((d, path.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(path: &str, text: &str) -> (String, String) {
        (path.into(), text.into())
    }

    fn hit(files: &[(String, String)], d: &Iface) -> Option<String> {
        let ours = [d.clone()];
        managed(files, &ours).first().map(|(_, p)| p.to_string())
    }

    #[test]
    fn name_globs_decide_which_interfaces_a_file_takes() {
        let d = Iface::new("msl-vxlan", "vxlan");
        let v = Iface::new("msl0a1b2c3d4e5f", "veth");
        for (names, takes_vxlan, takes_veth) in [
            ("*", true, true),
            ("msl*", true, true),
            ("en* msl*", true, true),
            ("msl-*", true, false),
            ("eth0 en*", false, false),
            ("!eth0", true, true),
            ("!msl* eth0", false, false),
            ("msl-vx?an", true, false),
        ] {
            let f = [net(
                "/etc/systemd/network/10-x.network",
                &format!("[Match]\nName={names}\n\n[Network]\nDHCP=yes\n"),
            )];
            assert_eq!(hit(&f, &d).is_some(), takes_vxlan, "{names} on {}", d.name);
            assert_eq!(hit(&f, &v).is_some(), takes_veth, "{names} on {}", v.name);
        }
    }

    #[test]
    fn lists_accumulate_and_reset_and_kind_counts() {
        let d = Iface::new("msl-vxlan", "vxlan");
        let f = |t: &str| [net("/etc/systemd/network/10-x.network", t)];
        assert!(hit(&f("[Match]\nName=eth0\nName=msl*\n"), &d).is_some());
        assert!(hit(&f("[Match]\nName=msl*\nName=\nName=eth0\n"), &d).is_none());
        assert!(hit(&f("[Match]\nKind=vxlan\n"), &d).is_some());
        assert!(hit(&f("[Match]\nName=msl*\nKind=bridge\n"), &d).is_none());
        assert!(hit(&f("[Match]\nName=msl*\nMACAddress=00:11:22:33:44:55\n"), &d).is_none());
        assert!(
            hit(&f("[Network]\nDHCP=yes\n"), &d).is_some(),
            "no [Match] matches all"
        );
    }

    #[test]
    fn the_first_matching_file_wins_and_may_leave_it_alone() {
        let d = Iface::new("msl-wg0", "wireguard");
        let all = net(
            "/etc/systemd/network/80-all.network",
            "[Match]\nName=*\n[Network]\nDHCP=yes\n",
        );
        let ours = net(
            "/etc/systemd/network/00-muslin.network",
            "[Match]\nName=msl*\n[Link]\nUnmanaged=yes\n",
        );
        assert_eq!(
            hit(std::slice::from_ref(&all), &d).as_deref(),
            Some("/etc/systemd/network/80-all.network")
        );
        assert_eq!(hit(&[all, ours], &d), None);
        // A file of the same name in /etc hides the one in /usr/lib.
        let lib = net(
            "/usr/lib/systemd/network/80-all.network",
            "[Match]\nName=*\n",
        );
        let etc = net(
            "/etc/systemd/network/80-all.network",
            "[Match]\nName=eth0\n",
        );
        assert_eq!(hit(&[lib.clone(), etc], &d), None);
        assert!(hit(&[lib], &d).is_some());
        // Other files are not .network files.
        assert_eq!(
            hit(
                &[net("/etc/systemd/network/99-default.link", "[Match]\n")],
                &d
            ),
            None
        );
    }
}
