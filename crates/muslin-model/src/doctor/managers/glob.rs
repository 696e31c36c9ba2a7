//! Shell-style globs (`fnmatch(3)` without flags), as NetworkManager's
//! `interface-name:` specs and systemd-networkd's `Name=` match interface
//! names: `*`, `?` and `[...]` classes with ranges and `!`/`^` negation.

/// Whether `name` matches `pattern` in full.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    at(&p, &n)
}

fn at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        // Try every split: names are at most 15 bytes, so no blow-up.
        Some('*') => (0..=n.len()).any(|i| at(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && at(&p[1..], &n[1..]),
        Some('[') => match class(&p[1..]) {
            Some((set, rest)) => n.first().is_some_and(|c| set.contains(*c)) && at(rest, &n[1..]),
            // An unclosed `[` is an ordinary character.
            None => n.first() == Some(&'[') && at(&p[1..], &n[1..]),
        },
        Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && at(&p[2..], &n[1..]),
        Some(c) => n.first() == Some(c) && at(&p[1..], &n[1..]),
    }
}

struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)) != self.negated
    }
}

/// The class after a `[`, and the pattern after its `]`.
fn class(p: &[char]) -> Option<(Class, &[char])> {
    let negated = matches!(p.first(), Some('!' | '^'));
    let mut i = usize::from(negated);
    let mut ranges = Vec::new();
    // A `]` first in the class is a member, not its end.
    let mut first = true;
    while i < p.len() {
        let c = p[i];
        if c == ']' && !first {
            return Some((Class { negated, ranges }, &p[i + 1..]));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            ranges.push((c, p[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_and_questions() {
        assert!(matches("*", "msl-vxlan"));
        assert!(matches("msl*", "msl"));
        assert!(matches("msl*", "msl0a1b2c3d4e5f"));
        assert!(matches("msl-*", "msl-wg0"));
        assert!(!matches("msl-*", "msl0a1b2c3d4e5f"));
        assert!(matches("*vx*", "msl-vxlan"));
        assert!(matches("msl-wg?", "msl-wg0"));
        assert!(!matches("msl-wg?", "msl-wg10"));
        assert!(!matches("en*", "msl-vxlan"));
        assert!(!matches("msl", "msl-vxlan"));
        assert!(matches("", ""));
        assert!(!matches("", "msl"));
    }

    #[test]
    fn classes() {
        assert!(matches("[lm]sl*", "msl-vxlan"));
        assert!(matches("m[a-z]l*", "msl-vxlan"));
        assert!(!matches("m[!s]l*", "msl-vxlan"));
        assert!(matches("m[^t]l*", "msl-vxlan"));
        assert!(matches("[]m]sl", "msl"));
        assert!(matches("a[b", "a[b"), "an unclosed class is literal");
        assert!(matches(r"msl\*", "msl*"));
        assert!(!matches(r"msl\*", "msl-vxlan"));
    }
}
