//! Whether NetworkManager's configuration leaves our interfaces alone:
//! its files merged in the order it reads them, then the device specs of
//! `[keyfile] unmanaged-devices` and `[device*] managed=false` sections.

use super::ini::{basename, entries, truthy};
use super::{glob, Iface};

/// NetworkManager's files in the order it reads them, shadowed ones left
/// out: `/usr/lib/.../conf.d`, `/run/.../conf.d`, `NetworkManager.conf`,
/// then `/etc/.../conf.d`, each directory by file name; a file in `/etc`
/// or `/run` hides one of the same name in a directory read earlier.
fn ordered(files: &[(String, String)]) -> Vec<&(String, String)> {
    let rank = |p: &str| -> Option<u8> {
        if p.ends_with("/NetworkManager.conf") {
            Some(2)
        } else if !p.contains("/NetworkManager/conf.d/") || !p.ends_with(".conf") {
            None
        } else if p.starts_with("/etc/") {
            Some(3)
        } else if p.starts_with("/run/") {
            Some(1)
        } else {
            Some(0)
        }
    };
    let mut ranked: Vec<(u8, &(String, String))> = files
        .iter()
        .filter_map(|f| Some((rank(&f.0)?, f)))
        .collect();
    let shadowed = |r: u8, name: &str, all: &[(u8, &(String, String))]| {
        r != 2
            && all
                .iter()
                .any(|(r2, f)| *r2 != 2 && *r2 > r && basename(&f.0) == name)
    };
    let snapshot = ranked.clone();
    ranked.retain(|(r, f)| !shadowed(*r, basename(&f.0), &snapshot));
    ranked.sort_by(|a, b| (a.0, basename(&a.1 .0)).cmp(&(b.0, basename(&b.1 .0))));
    ranked.into_iter().map(|(_, f)| f).collect()
}

/// The merged `unmanaged-devices` list, and the last file that changed it.
fn unmanaged_devices(files: &[&(String, String)]) -> (Vec<String>, Option<String>) {
    let mut specs: Vec<String> = Vec::new();
    let mut from = None;
    for (path, text) in files {
        for e in entries(text).iter().filter(|e| e.section == "keyfile") {
            let items = split(e.value);
            match e.key {
                "unmanaged-devices" => specs = items,
                "unmanaged-devices+" => specs.extend(items),
                "unmanaged-devices-" => specs.retain(|s| !items.contains(s)),
                _ => continue,
            }
            from = Some(path.clone());
        }
    }
    (specs, from)
}

/// A device list: items separated by `,` or `;`.
fn split(v: &str) -> Vec<String> {
    v.split([',', ';'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether a device list matches the interface: some item matches and no
/// `except:` item does (a list of only `except:` items matches the rest).
pub fn list_matches(specs: &[String], d: &Iface) -> bool {
    let (except, plain): (Vec<&String>, Vec<&String>) =
        specs.iter().partition(|s| s.starts_with("except:"));
    if except
        .iter()
        .any(|s| spec_matches(&s["except:".len()..], d))
    {
        return false;
    }
    (plain.is_empty() && !except.is_empty()) || plain.iter().any(|s| spec_matches(s, d))
}

fn spec_matches(spec: &str, d: &Iface) -> bool {
    if spec == "*" {
        return true;
    }
    if let Some(p) = spec.strip_prefix("interface-name:") {
        return match p.strip_prefix('=') {
            Some(exact) => exact == d.name,
            None => glob::matches(p.strip_prefix('~').unwrap_or(p), &d.name),
        };
    }
    if let Some(t) = spec.strip_prefix("type:") {
        return t == d.kind;
    }
    // MAC, driver and subchannel specs cannot name our devices ahead of
    // their creation: they do not count.
    false
}

/// Whether some `[device*]` section with `managed=false` matches it.
fn device_section_unmanages(files: &[&(String, String)], d: &Iface) -> Option<String> {
    for (path, text) in files {
        let all = entries(text);
        let mut sections: Vec<&str> = all.iter().map(|e| e.section).collect();
        sections.dedup();
        for s in sections.into_iter().filter(|s| s.starts_with("device")) {
            let get = |k: &str| all.iter().rev().find(|e| e.section == s && e.key == k);
            let unmanaged = get("managed").is_some_and(|e| !truthy(e.value));
            let matches = get("match-device").is_none_or(|e| list_matches(&split(e.value), d));
            if unmanaged && matches {
                return Some(path.clone());
            }
        }
    }
    None
}

/// Our interfaces NetworkManager would manage, and the file(s) that leave
/// the others alone.
pub fn managed<'a>(files: &[(String, String)], ours: &'a [Iface]) -> (Vec<&'a Iface>, Vec<String>) {
    let files = ordered(files);
    let (specs, from) = unmanaged_devices(&files);
    let mut why = Vec::new();
    let mut left = Vec::new();
    for d in ours {
        if list_matches(&specs, d) {
            why.extend(from.clone());
        } else if let Some(f) = device_section_unmanages(&files, d) {
            why.push(f);
        } else {
            left.push(d);
        }
    }
    why.sort();
    why.dedup();
    (left, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Vec<Iface> {
        vec![
            Iface::new("msl-vxlan", "vxlan"),
            Iface::new("msl-wg0", "wireguard"),
        ]
    }

    fn file(path: &str, text: &str) -> (String, String) {
        (path.into(), text.into())
    }

    fn left(files: &[(String, String)]) -> Vec<String> {
        let o = ours();
        managed(files, &o)
            .0
            .iter()
            .map(|d| d.name.clone())
            .collect()
    }

    #[test]
    fn patterns_that_cover_our_names_leave_them_alone() {
        for v in [
            "interface-name:msl*",
            "interface-name:msl-*",
            "interface-name:~msl*",
            "mac:00:11:22:33:44:55;interface-name:msl*",
            "interface-name:eth9, interface-name:msl*",
            "*",
            "type:vxlan,type:wireguard",
            "interface-name:msl-vxlan;interface-name:=msl-wg0",
            "except:interface-name:eth*",
        ] {
            let f = [file(
                "/etc/NetworkManager/conf.d/muslin.conf",
                &format!("[keyfile]\nunmanaged-devices={v}\n"),
            )];
            assert!(left(&f).is_empty(), "{v}: {:?}", left(&f));
        }
    }

    #[test]
    fn patterns_that_miss_our_names_leave_them_managed() {
        for (v, missed) in [
            ("interface-name:docker*", "msl-vxlan msl-wg0"),
            ("interface-name:msl-vx*", "msl-wg0"),
            ("interface-name:=msl*", "msl-vxlan msl-wg0"),
            (
                "interface-name:msl*,except:interface-name:msl-wg0",
                "msl-wg0",
            ),
            ("except:type:vxlan", "msl-vxlan"),
            ("mac:ee:ee:ee:ee:ee:ee", "msl-vxlan msl-wg0"),
        ] {
            let f = [file(
                "/etc/NetworkManager/NetworkManager.conf",
                &format!("[keyfile]\nunmanaged-devices={v}\n"),
            )];
            assert_eq!(left(&f).join(" "), missed, "{v}");
        }
        // The key outside [keyfile] does nothing.
        let f = [file(
            "/etc/NetworkManager/conf.d/a.conf",
            "[main]\nunmanaged-devices=interface-name:msl*\n",
        )];
        assert_eq!(left(&f).len(), 2);
        assert_eq!(left(&[]).len(), 2);
    }

    #[test]
    fn later_files_override_append_or_remove() {
        let set = "[keyfile]\nunmanaged-devices=interface-name:msl*\n";
        let reset = "[keyfile]\nunmanaged-devices=interface-name:eth9\n";
        // /etc/conf.d is read after NetworkManager.conf, which is read
        // after /run and /usr/lib.
        let f = [
            file("/etc/NetworkManager/conf.d/50-reset.conf", reset),
            file("/etc/NetworkManager/NetworkManager.conf", set),
        ];
        assert_eq!(left(&f).len(), 2);
        let f = [
            file("/etc/NetworkManager/conf.d/10-muslin.conf", set),
            file("/run/NetworkManager/conf.d/90-reset.conf", reset),
        ];
        assert!(left(&f).is_empty());
        let f = [
            file("/etc/NetworkManager/conf.d/10-a.conf", reset),
            file(
                "/etc/NetworkManager/conf.d/20-b.conf",
                "[keyfile]\nunmanaged-devices+=interface-name:msl*\n",
            ),
        ];
        assert!(left(&f).is_empty());
        let f = [
            file("/etc/NetworkManager/conf.d/10-a.conf", set),
            file(
                "/etc/NetworkManager/conf.d/20-b.conf",
                "[keyfile]\nunmanaged-devices-=interface-name:msl*\n",
            ),
        ];
        assert_eq!(left(&f).len(), 2);
        // A file in /etc hides the one of the same name in /usr/lib.
        let f = [
            file("/usr/lib/NetworkManager/conf.d/muslin.conf", set),
            file("/etc/NetworkManager/conf.d/muslin.conf", "# disabled\n"),
        ];
        assert_eq!(left(&f).len(), 2);
    }

    #[test]
    fn a_device_section_with_managed_false_counts() {
        let f = [file(
            "/etc/NetworkManager/conf.d/muslin.conf",
            "[device-muslin]\nmatch-device=interface-name:msl*\nmanaged=0\n",
        )];
        let o = ours();
        let (left, why) = managed(&f, &o);
        assert!(left.is_empty());
        assert_eq!(why, ["/etc/NetworkManager/conf.d/muslin.conf"]);
        let f = [file(
            "/etc/NetworkManager/conf.d/muslin.conf",
            "[device-muslin]\nmatch-device=interface-name:msl*\nmanaged=1\n",
        )];
        assert_eq!(managed(&f, &o).0.len(), 2);
    }
}
