use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::env::{CONTAINER_ID_MAX, IFNAME_INPUT_MAX};
use super::{CniError, CniVersion, Dns, ErrorCode};
use crate::agent_config::{MTU_MAX, MTU_MIN};

/// One network configuration as the runtime hands it to the plugin.
///
/// Unknown keys are refused so that a typo (`"mtuu"`) is an error instead of
/// a silently ignored setting; the keys the spec lets runtimes inject are
/// all listed here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub cni_versions: Option<Vec<String>>,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Path of the agent's socket; defaults to the agent's default.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// MTU of the attachment; defaults to the agent's.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The Muslin network to join (`muslin network create`); without it,
    /// the network named like this configuration, else the default one.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    #[serde(default)]
    pub capabilities: Option<serde_json::Value>,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(default)]
    pub disable_check: Option<bool>,
    #[serde(default, rename = "disableGC")]
    pub disable_gc: Option<bool>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<GcAttachment>>,
}

/// An attachment the runtime still holds, as listed for GC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The parts of a previous result that CHECK compares against the host.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrevResult {
    #[serde(default)]
    pub interfaces: Vec<PrevInterface>,
    #[serde(default)]
    pub ips: Vec<PrevIp>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PrevInterface {
    pub name: String,
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PrevIp {
    pub address: ipnet::IpNet,
    #[serde(default)]
    pub interface: Option<usize>,
}

fn invalid(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

/// The largest network configuration read from stdin. Real ones are a few
/// hundred bytes (a GC's list of attachments, some kilobytes); past this the
/// input is a bug upstream, refused before anything parses or forwards it.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A Unix socket address holds at most 107 bytes of path (`sun_path`).
const SOCKET_PATH_MAX: usize = 107;

fn check_len(field: &str, value: &str, limit: usize) -> Result<(), CniError> {
    if value.len() > limit {
        return Err(invalid(format!(
            "{field}: {} bytes long; at most {limit} are accepted",
            value.len()
        )));
    }
    Ok(())
}

/// Upper bounds of the string fields Muslin uses, checked before any check
/// that might quote a value: past them a field is an invalid configuration
/// (7), named with its limit and never echoed whole.
fn check_lengths(conf: &NetConf) -> Result<(), CniError> {
    // A key of the agent's records, so kept to a file name's length (NAME_MAX).
    check_len("name", &conf.name, 255)?;
    check_len("cniVersion", &conf.cni_version, 32)?;
    check_len("type", &conf.plugin_type, 255)?;
    if let Some(sock) = &conf.socket {
        if sock.as_os_str().len() > SOCKET_PATH_MAX {
            return Err(invalid(format!(
                "socket: {} bytes long; a Unix socket path holds at most {SOCKET_PATH_MAX}",
                sock.as_os_str().len()
            )));
        }
    }
    // GC's entries stand for CNI_CONTAINERID and CNI_IFNAME: the same bounds.
    for (i, a) in conf.valid_attachments.iter().flatten().enumerate() {
        let at = format!("cni.dev/valid-attachments[{i}]");
        check_len(
            &format!("{at}.containerID"),
            &a.container_id,
            CONTAINER_ID_MAX,
        )?;
        check_len(&format!("{at}.ifname"), &a.ifname, IFNAME_INPUT_MAX)?;
    }
    Ok(())
}

/// Network names follow the spec's grammar, so they are safe as keys and
/// in file names.
fn check_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "name: {name:?} is not a valid network name (a letter or digit, then letters, \
             digits, '_', '.' or '-')"
        )))
    }
}

impl NetConf {
    /// Parses and validates stdin. Malformed JSON is a decoding failure (6);
    /// well-formed JSON with a bad field is an invalid config (7) whose
    /// message starts with the field's path.
    pub fn parse(stdin: &[u8]) -> Result<(NetConf, CniVersion), CniError> {
        if stdin.len() > MAX_CONFIG_BYTES {
            return Err(invalid(format!(
                "network configuration: more than {MAX_CONFIG_BYTES} bytes (1 MiB) on stdin; \
                 at most that much is accepted"
            )));
        }
        let de = &mut serde_json::Deserializer::from_slice(stdin);
        let conf: NetConf = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let code = match inner.classify() {
                serde_json::error::Category::Data => ErrorCode::InvalidConfig,
                _ => ErrorCode::Decode,
            };
            let msg = if path == "." || code == ErrorCode::Decode {
                format!("network configuration: {inner}")
            } else {
                format!("{path}: {inner}")
            };
            CniError::new(code, msg)
        })?;
        check_lengths(&conf)?;
        let version = CniVersion::parse(&conf.cni_version)?;
        check_name(&conf.name)?;
        if conf.plugin_type.is_empty() {
            return Err(invalid("type: must not be empty".into()));
        }
        if let Some(ipam) = &conf.ipam {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                format!(
                    "ipam: {ipam} is not supported: the Muslin agent allocates addresses \
                     from its own blocks; remove the \"ipam\" key"
                ),
            ));
        }
        if let Some(mtu) = conf.mtu {
            if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
                return Err(invalid(format!(
                    "mtu: {mtu} is out of range {MTU_MIN}..={MTU_MAX}"
                )));
            }
        }
        if let Some(sock) = &conf.socket {
            if !sock.is_absolute() {
                return Err(invalid(format!(
                    "socket: {:?} must be an absolute path",
                    sock.display()
                )));
            }
        }
        Ok((conf, version))
    }

    /// The previous result, if the runtime passed one.
    pub fn prev_result(&self) -> Result<Option<PrevResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(|v| {
                serde_json::from_value(v.clone()).map_err(|e| invalid(format!("prevResult: {e}")))
            })
            .transpose()
    }
}

/// Bounds on `args.cni.labels`: every label travels to every node in the
/// endpoint's cluster record (a gossip value), so a hostile or runaway
/// configuration must not bloat it. Kubernetes' own limits fit inside.
pub const LABELS_MAX: usize = 32;
pub const LABEL_KEY_MAX: usize = 253;
pub const LABEL_VALUE_MAX: usize = 253;
pub const LABELS_TOTAL_MAX: usize = 4096;

impl NetConf {
    /// The labels of the CNI conventions' `"args": {"cni": {"labels":
    /// [{"key": K, "value": V}]}}`; none when absent. Anything malformed or
    /// oversized is an invalid configuration naming the offending field.
    pub fn labels(&self) -> Result<BTreeMap<String, String>, CniError> {
        let mut out = BTreeMap::new();
        let Some(labels) = self
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("labels"))
        else {
            return Ok(out);
        };
        let list = labels.as_array().ok_or_else(|| {
            invalid("args.cni.labels: must be a list of {\"key\", \"value\"}".into())
        })?;
        if list.len() > LABELS_MAX {
            return Err(invalid(format!(
                "args.cni.labels: {} labels; at most {LABELS_MAX} are accepted",
                list.len()
            )));
        }
        let mut total = 0;
        for (i, l) in list.iter().enumerate() {
            let field = |f: &str| -> Result<&str, CniError> {
                l.get(f).and_then(|v| v.as_str()).ok_or_else(|| {
                    invalid(format!("args.cni.labels[{i}].{f}: a string is required"))
                })
            };
            let (k, v) = (field("key")?, field("value")?);
            check_len(&format!("args.cni.labels[{i}].key"), k, LABEL_KEY_MAX)?;
            check_len(&format!("args.cni.labels[{i}].value"), v, LABEL_VALUE_MAX)?;
            if k.is_empty() {
                return Err(invalid(format!(
                    "args.cni.labels[{i}].key: must not be empty"
                )));
            }
            total += k.len() + v.len();
            if total > LABELS_TOTAL_MAX {
                return Err(invalid(format!(
                    "args.cni.labels: more than {LABELS_TOTAL_MAX} bytes of keys and values"
                )));
            }
            // The later of two equal keys wins, as in a JSON object.
            out.insert(k.to_string(), v.to_string());
        }
        Ok(out)
    }
}

/// At most this many named ports per endpoint (they travel in its record).
pub const PORTS_MAX: usize = 32;

impl NetConf {
    /// The ports the endpoint names, from `"args": {"cni": {"ports":
    /// [{"name": "http", "port": 8080, "protocol": "TCP"}]}}` (protocol
    /// TCP when left out), so policies can allow a port by its name.
    pub fn ports(&self) -> Result<BTreeMap<String, crate::policy::NamedPort>, CniError> {
        use crate::policy::{NamedPort, Protocol};
        let mut out = BTreeMap::new();
        let Some(ports) = self
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ports"))
        else {
            return Ok(out);
        };
        let list = ports.as_array().ok_or_else(|| {
            invalid("args.cni.ports: must be a list of {\"name\", \"port\", \"protocol\"}".into())
        })?;
        if list.len() > PORTS_MAX {
            return Err(invalid(format!(
                "args.cni.ports: {} ports; at most {PORTS_MAX} are accepted",
                list.len()
            )));
        }
        for (i, p) in list.iter().enumerate() {
            let at = |f: &str| format!("args.cni.ports[{i}].{f}");
            let name = p
                .get("name")
                .and_then(|v| v.as_str())
                .ok_or_else(|| invalid(format!("{}: a string is required", at("name"))))?;
            if let Some(problem) = crate::policy::port_name_problem(name) {
                return Err(invalid(format!("{}: {problem}", at("name"))));
            }
            let port = p
                .get("port")
                .and_then(|v| v.as_u64())
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid(format!("{}: a number 1-65535 is required", at("port"))))?;
            let protocol = match p.get("protocol").map(|v| v.as_str()) {
                None => Protocol::Tcp,
                Some(Some(s)) if s.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
                Some(Some(s)) if s.eq_ignore_ascii_case("udp") => Protocol::Udp,
                Some(Some(s)) if s.eq_ignore_ascii_case("sctp") => Protocol::Sctp,
                Some(_) => return Err(invalid(format!("{}: TCP, UDP or SCTP", at("protocol")))),
            };
            out.insert(name.to_string(), NamedPort { protocol, port });
        }
        Ok(out)
    }

    /// `args.cni.name`: the container's name for the name service, which
    /// wins over `K8S_POD_NAME`.
    pub fn container_name(&self) -> Result<Option<String>, CniError> {
        let Some(v) = self
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("name"))
        else {
            return Ok(None);
        };
        let name = v
            .as_str()
            .ok_or_else(|| invalid("args.cni.name: a string is required".into()))?;
        if let Some(problem) = crate::dns::name_problem(name) {
            return Err(invalid(format!("args.cni.name: {problem}")));
        }
        Ok(Some(name.to_string()))
    }

    /// The attachment's aliases: `args.cni.aliases`, then what the runtime
    /// passes for this network through the `aliases` capability
    /// (`runtimeConfig.aliases`, keyed by network name, as podman does).
    pub fn aliases(&self) -> Result<Vec<String>, CniError> {
        let mut out: Vec<String> = Vec::new();
        let sources = [
            (
                "args.cni.aliases".to_string(),
                self.args
                    .as_ref()
                    .and_then(|a| a.get("cni"))
                    .and_then(|c| c.get("aliases")),
            ),
            (
                format!("runtimeConfig.aliases.{}", self.name),
                self.runtime_config
                    .as_ref()
                    .and_then(|r| r.get("aliases"))
                    .and_then(|a| a.get(&self.name)),
            ),
        ];
        for (field, v) in sources {
            let Some(v) = v else { continue };
            let list = v
                .as_array()
                .ok_or_else(|| invalid(format!("{field}: must be a list of names")))?;
            for (i, a) in list.iter().enumerate() {
                let a = a
                    .as_str()
                    .ok_or_else(|| invalid(format!("{field}[{i}]: a string is required")))?;
                if let Some(problem) = crate::dns::name_problem(a) {
                    return Err(invalid(format!("{field}[{i}]: {problem}")));
                }
                if !out.iter().any(|o| o == a) {
                    out.push(a.to_string());
                }
            }
        }
        if out.len() > crate::dns::MAX_ALIASES {
            return Err(invalid(format!(
                "aliases: {} given; at most {} are accepted",
                out.len(),
                crate::dns::MAX_ALIASES
            )));
        }
        Ok(out)
    }
}

/// Best-effort `cniVersion` of a config that may not parse, so that even a
/// decoding error is reported in the version the runtime speaks.
pub fn cni_version_hint(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|s| CniVersion::parse(s).is_ok())
        .unwrap_or_else(|| CniVersion::LATEST.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes()).map(|(c, _)| c)
    }

    const GOOD: &str = r#"{"cniVersion":"1.1.0","name":"pods","type":"muslin"}"#;

    #[test]
    fn minimal_and_full_configs_parse() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.name, "pods");
        let full = r#"{"cniVersion":"1.0.0","name":"pods","type":"muslin","mtu":1400,
            "socket":"/run/muslin/agent.sock","dns":{"nameservers":["10.96.0.10"]},
            "capabilities":{"portMappings":true},"runtimeConfig":{"portMappings":[]},
            "args":{"cni":{}},"prevResult":{"cniVersion":"1.0.0","ips":[]},
            "disableCheck":false,"disableGC":false,"cniVersions":["1.0.0"],
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        let (c, v) = NetConf::parse(full.as_bytes()).unwrap();
        assert_eq!(v, CniVersion::V1_0_0);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.valid_attachments.unwrap()[0].ifname, "eth0");
    }

    #[test]
    fn malformed_json_is_decode_error() {
        for bad in ["", "{", "not json", r#"{"name": }"#] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, 6, "{bad:?}: {e}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (r#"{"name":"p","type":"muslin"}"#, 7, "cniVersion"),
            (r#"{"cniVersion":"1.1.0","type":"muslin"}"#, 7, "name"),
            (r#"{"cniVersion":"1.1.0","name":"p"}"#, 7, "type"),
            (
                r#"{"cniVersion":"1.1.0","name":"p","type":"muslin","mtuu":1}"#,
                7,
                "mtuu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"p","type":"muslin","mtu":"big"}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"p","type":"muslin","mtu":100}"#,
                7,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"p","type":"muslin","socket":"rel"}"#,
                7,
                "socket",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"p q","type":"muslin"}"#,
                7,
                "name",
            ),
            (r#"{"cniVersion":"1.1.0","name":"p","type":""}"#, 7, "type"),
            (
                r#"{"cniVersion":"1.1.0","name":"p","type":"muslin","dns":{"nameservers":1}}"#,
                7,
                "dns.nameservers",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"p","type":"muslin","ipam":{"type":"host-local"}}"#,
                2,
                "ipam",
            ),
            (
                r#"{"cniVersion":"0.3.1","name":"p","type":"muslin"}"#,
                1,
                "0.3.1",
            ),
        ];
        for (input, code, field) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, code, "{input}: {e}");
            assert!(
                e.msg.contains(field),
                "{input}: message {:?} names {field}",
                e.msg
            );
        }
    }

    #[test]
    fn over_long_input_is_invalid_config_naming_field_and_limit() {
        let conf =
            |name: &str| format!(r#"{{"cniVersion":"1.1.0","name":"{name}","type":"muslin"}}"#);
        let e = parse(&conf(&"n".repeat(256))).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.starts_with("name:") && e.msg.contains("255"), "{e}");
        assert!(e.msg.len() < 200, "the value is not echoed: {e}");
        parse(&conf(&"n".repeat(255))).unwrap();

        let e = parse(&conf(&"n".repeat(MAX_CONFIG_BYTES))).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains(&MAX_CONFIG_BYTES.to_string()), "{e}");

        let sock = format!("/{}", "s".repeat(107));
        let e = parse(&GOOD.replace("}", &format!(r#","socket":"{sock}"}}"#))).unwrap_err();
        assert!(e.msg.starts_with("socket:") && e.msg.contains("107"), "{e}");
        let e = parse(&GOOD.replace("1.1.0", &"1".repeat(33))).unwrap_err();
        assert!(e.msg.starts_with("cniVersion:"), "{e}");

        let long_id = "c".repeat(1025);
        let gc = GOOD.replace(
            "}",
            &format!(
                r#","cni.dev/valid-attachments":[{{"containerID":"{long_id}","ifname":"eth0"}}]}}"#
            ),
        );
        let e = parse(&gc).unwrap_err();
        assert!(
            e.msg
                .starts_with("cni.dev/valid-attachments[0].containerID:"),
            "{e}"
        );
    }

    #[test]
    fn prev_result_parses_loosely() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"p","type":"muslin","prevResult":{
            "cniVersion":"1.1.0","interfaces":[{"name":"msl1","mac":"ee:ee:ee:ee:ee:ee"},
            {"name":"eth0","sandbox":"/x","mtu":1500}],
            "ips":[{"address":"10.0.0.5/32","gateway":"169.254.1.1","interface":1}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}}"#,
        )
        .unwrap();
        let p = c.prev_result().unwrap().unwrap();
        assert_eq!(p.ips[0].address.to_string(), "10.0.0.5/32");
        assert_eq!(p.interfaces[1].sandbox.as_deref(), Some("/x"));
    }

    #[test]
    fn labels_follow_the_conventions_and_are_bounded() {
        let with = |args: &str| {
            parse(&GOOD.replace("}", &format!(r#","args":{args}}}"#)))
                .unwrap()
                .labels()
        };
        assert!(parse(GOOD).unwrap().labels().unwrap().is_empty());
        assert!(with(r#"{"cni":{}}"#).unwrap().is_empty());
        let l =
            with(r#"{"cni":{"labels":[{"key":"app","value":"web"},{"key":"tier","value":""}]}}"#)
                .unwrap();
        assert_eq!(l["app"], "web");
        assert_eq!(l["tier"], "");
        let err = |args: &str| with(args).unwrap_err();
        let e = err(r#"{"cni":{"labels":{"app":"web"}}}"#);
        assert_eq!(e.code, 7);
        assert!(e.msg.starts_with("args.cni.labels:"), "{e}");
        let e = err(r#"{"cni":{"labels":[{"key":"app"}]}}"#);
        assert!(e.msg.starts_with("args.cni.labels[0].value:"), "{e}");
        let e = err(r#"{"cni":{"labels":[{"key":"","value":"x"}]}}"#);
        assert!(e.msg.starts_with("args.cni.labels[0].key:"), "{e}");
        let long = "k".repeat(LABEL_KEY_MAX + 1);
        let e = err(&format!(
            r#"{{"cni":{{"labels":[{{"key":"a","value":"b"}},{{"key":"{long}","value":"x"}}]}}}}"#
        ));
        assert_eq!(e.code, 7);
        assert!(e.msg.starts_with("args.cni.labels[1].key:"), "{e}");
        assert!(!e.msg.contains(&long), "the value is not echoed");
        let long = "v".repeat(LABEL_VALUE_MAX + 1);
        let e = err(&format!(
            r#"{{"cni":{{"labels":[{{"key":"a","value":"{long}"}}]}}}}"#
        ));
        assert!(e.msg.starts_with("args.cni.labels[0].value:"), "{e}");
        let many: Vec<String> = (0..=LABELS_MAX)
            .map(|i| format!(r#"{{"key":"k{i}","value":"v"}}"#))
            .collect();
        let e = err(&format!(r#"{{"cni":{{"labels":[{}]}}}}"#, many.join(",")));
        assert!(e.msg.contains(&LABELS_MAX.to_string()), "{e}");
        let big: Vec<String> = (0..20)
            .map(|i| format!(r#"{{"key":"k{i}","value":"{}"}}"#, "v".repeat(250)))
            .collect();
        let e = err(&format!(r#"{{"cni":{{"labels":[{}]}}}}"#, big.join(",")));
        assert!(e.msg.contains(&LABELS_TOTAL_MAX.to_string()), "{e}");
    }

    #[test]
    fn version_hint() {
        assert_eq!(cni_version_hint(br#"{"cniVersion":"0.4.0","x":"#), "1.1.0");
        assert_eq!(cni_version_hint(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(cni_version_hint(b"junk"), "1.1.0");
    }

    #[test]
    fn names_and_aliases_are_dns_names_and_bounded() {
        let conf = |args: &str, rc: &str| {
            NetConf::parse(
                format!(r#"{{"cniVersion":"1.1.0","name":"net","type":"muslin","args":{args},"runtimeConfig":{rc}}}"#)
                    .as_bytes(),
            )
            .unwrap()
            .0
        };
        let c = conf(
            r#"{"cni":{"name":"web-0","aliases":["www","api"]}}"#,
            r#"{"aliases":{"net":["www","extra"],"other":["no"]}}"#,
        );
        assert_eq!(c.container_name().unwrap(), Some("web-0".into()));
        assert_eq!(c.aliases().unwrap(), vec!["www", "api", "extra"]);
        let bad = conf(r#"{"cni":{"name":"db.shop"}}"#, "{}");
        assert!(bad
            .container_name()
            .unwrap_err()
            .msg
            .contains("args.cni.name"));
        let bad = conf(r#"{"cni":{"name":"Web_0"}}"#, "{}");
        assert!(bad
            .container_name()
            .unwrap_err()
            .msg
            .contains("args.cni.name"));
        let bad = conf(r#"{"cni":{"aliases":["ok","a b"]}}"#, "{}");
        assert!(bad
            .aliases()
            .unwrap_err()
            .msg
            .contains("args.cni.aliases[1]"));
        let bad = conf(r#"{"cni":{"aliases":"www"}}"#, "{}");
        assert!(bad.aliases().unwrap_err().msg.contains("args.cni.aliases"));
        let many: Vec<String> = (0..33).map(|i| format!("\"a{i}\"")).collect();
        let bad = conf(
            &format!(r#"{{"cni":{{"aliases":[{}]}}}}"#, many.join(",")),
            "{}",
        );
        assert!(bad.aliases().unwrap_err().msg.contains("at most 32"));
        assert_eq!(conf("{}", "{}").aliases().unwrap(), Vec::<String>::new());
    }
}
