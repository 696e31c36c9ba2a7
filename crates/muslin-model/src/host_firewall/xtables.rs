//! The FORWARD chain as `iptables -S FORWARD` prints it. iptables-nft
//! chains are read here too, not from nft's JSON: nft shows an iptables
//! comment only as an opaque `xt` match, so our tag is visible only here.

use ipnet::IpNet;

use super::{
    Chain, Direction, ForwardChain, IptablesForward, PodRule, Rule, RuleRef, IPTABLES_CHAIN,
    IPTABLES_TABLE, RULE_COMMENT,
};

pub(super) fn forward_chain(x: &IptablesForward) -> ForwardChain {
    let mut chain = ForwardChain {
        chain: Chain {
            backend: x.backend,
            family: x.family,
            table: IPTABLES_TABLE.into(),
            name: IPTABLES_CHAIN.into(),
        },
        policy_drop: false,
        rules: Vec::new(),
    };
    for line in x.save.lines() {
        match words(line).as_slice() {
            [p, c, policy] if p == "-P" && c == IPTABLES_CHAIN => {
                chain.policy_drop = policy == "DROP"
            }
            [a, c, spec @ ..] if a == "-A" && c == IPTABLES_CHAIN => {
                chain.rules.push(rule(line, spec))
            }
            _ => {}
        }
    }
    chain
}

fn rule(line: &str, spec: &[String]) -> Rule {
    let ours = spec
        .windows(2)
        .any(|w| w[0] == "--comment" && w[1] == RULE_COMMENT);
    Rule {
        id: RuleRef::Spec(spec.to_vec()),
        text: line.trim().to_string(),
        ours,
        accepts: if ours { our_accept(spec) } else { None },
        drops: drops(spec),
        drops_range: drops_range(spec),
    }
}

/// A rule whose only options are comments and a DROP or REJECT target.
fn drops(spec: &[String]) -> bool {
    is_drop(&without_comments(spec))
}

/// The range of a rule whose only options are one source or destination
/// (not negated), comments and a DROP or REJECT target.
fn drops_range(spec: &[String]) -> Option<(Direction, IpNet)> {
    let rest = without_comments(spec);
    let (direction, range) = match rest.as_slice() {
        ["-s", r, ..] => (Direction::Source, r),
        ["-d", r, ..] => (Direction::Destination, r),
        _ => return None,
    };
    if !is_drop(&rest[2..]) {
        return None;
    }
    let range = match range.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(range.parse::<std::net::IpAddr>().ok()?),
    };
    Some((direction, range.trunc()))
}

fn is_drop(rest: &[&str]) -> bool {
    matches!(
        rest,
        ["-j", "DROP"] | ["-j", "REJECT"] | ["-j", "REJECT", "--reject-with", _]
    )
}

fn without_comments(spec: &[String]) -> Vec<&str> {
    let mut rest: Vec<&str> = Vec::new();
    let mut words = spec.iter().map(String::as_str).peekable();
    while let Some(w) = words.next() {
        // `-m comment` and `--comment TEXT` each take the word after them.
        let comment = (w == "-m" && words.peek() == Some(&"comment")) || w == "--comment";
        if comment {
            words.next();
        } else {
            rest.push(w);
        }
    }
    rest
}

/// The accept this rule stands for, if its words are exactly one of ours.
fn our_accept(spec: &[String]) -> Option<PodRule> {
    let direction = match spec.first()?.as_str() {
        "-s" => Direction::Source,
        "-d" => Direction::Destination,
        _ => return None,
    };
    let cidr = spec.get(1)?.parse().ok()?;
    let rule = PodRule { direction, cidr };
    (rule.iptables_spec() == spec).then_some(rule)
}

/// Splits a line of iptables-save syntax into words: iptables puts a word
/// with spaces in double quotes and escapes `"` and `\` inside with `\`.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut in_word, mut quoted) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => word.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_unquote_like_iptables_save() {
        assert_eq!(
            words(r#"-A FORWARD -m comment --comment "a \"b\" \\c" -j ACCEPT"#),
            [
                "-A",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                r#"a "b" \c"#,
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(words(r#"--comment """#), ["--comment", ""]);
    }

    #[test]
    fn only_comments_and_a_drop_target_drop_everything() {
        let w = |s: &str| words(s);
        assert!(drops(&w("-j DROP")));
        assert!(drops(&w(
            r#"-m comment --comment "deny all" -j REJECT --reject-with icmp-host-prohibited"#
        )));
        assert!(!drops(&w("-i eth0 -j DROP")));
        assert!(!drops(&w("-m conntrack --ctstate INVALID -j DROP")));
        assert!(!drops(&w("-j DOCKER-USER")));
    }

    #[test]
    fn a_drop_of_one_source_or_destination_is_read_with_its_range() {
        let d = |s: &str| drops_range(&words(s));
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            d("-s 10.244.0.0/16 -j DROP"),
            Some((Direction::Source, n("10.244.0.0/16")))
        );
        assert_eq!(
            d(
                r#"-d 10.244.3.7/32 -m comment --comment "x" -j REJECT --reject-with icmp-port-unreachable"#
            ),
            Some((Direction::Destination, n("10.244.3.7/32")))
        );
        assert_eq!(d("! -s 10.244.0.0/16 -j DROP"), None);
        assert_eq!(d("-s 10.244.0.0/16 -p tcp -j DROP"), None);
        assert_eq!(d("-s 10.244.0.0/16 -j ACCEPT"), None);
        assert_eq!(d("-j DROP"), None);
    }

    #[test]
    fn a_tagged_rule_with_extra_conditions_is_ours_but_no_accept() {
        let spec = words(
            r#"-s 10.244.0.0/16 -i eth0 -m comment --comment "muslin: pod traffic" -j ACCEPT"#,
        );
        let r = rule("", &spec);
        assert!(r.ours);
        assert_eq!(r.accepts, None);
    }
}
