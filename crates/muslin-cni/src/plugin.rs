use std::io::Read;
use std::path::PathBuf;

use muslin_model::agent_config::DEFAULT_SOCKET;
use muslin_model::api::{
    AddRequest, Added, CheckRequest, DelRequest, GcRequest, Request, Response,
};
use muslin_model::cni::{
    cni_version_hint, pod_identity, version_reply, CniError, CniVersion, Command, Dns, Env,
    ErrorCode, Interface, IpConfig, NetConf, Route, SuccessResult, MAX_CONFIG_BYTES,
};
use muslin_model::ipam::AttachmentKey;
use muslin_model::plumbing::{default_route, gateway_for};

use crate::client::{call, ClientError};

/// What the process prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

/// Reads the network configuration from `r`, at most one byte past
/// [`MAX_CONFIG_BYTES`]: enough to tell that it is too large without
/// holding a runaway input in memory. The rest is left unread; runtimes
/// ignore the broken pipe when a plugin exits before reading all of it.
pub fn read_config(r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(MAX_CONFIG_BYTES as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Runs one invocation. `get` reads the environment.
pub fn run(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    match invoke(get, stdin) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: e.to_json(&version_hint(stdin)),
            exit_code: 1,
        },
    }
}

/// The version to answer in; an over-size input is not worth parsing.
fn version_hint(stdin: &[u8]) -> String {
    if stdin.len() > MAX_CONFIG_BYTES {
        return CniVersion::LATEST.as_str().to_string();
    }
    cni_version_hint(stdin)
}

fn invoke(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<String, CniError> {
    let env = Env::from_lookup(get)?;
    if env.command == Command::Version {
        return Ok(version_reply(stdin));
    }
    let (conf, version) = NetConf::parse(stdin)?;
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let key = || AttachmentKey {
        network: conf.name.clone(),
        container_id: env
            .container_id
            .clone()
            .expect("validated for this command"),
        ifname: env.ifname.clone().expect("validated for this command"),
    };
    match env.command {
        Command::Version => unreachable!("answered above"),
        Command::Add => {
            let netns = env.netns.clone().expect("validated for ADD");
            // Checked before the agent is asked: a refused ADD changes nothing.
            let labels = conf.labels()?;
            let ports = conf.ports()?;
            let aliases = conf.aliases()?;
            let name = conf.container_name()?;
            let (pod_namespace, pod_name) = pod_identity(&env.args)?;
            let pod = match (&pod_namespace, &pod_name) {
                (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
                (None, Some(n)) => Some(n.clone()),
                _ => None,
            };
            let req = Request::Add(AddRequest {
                key: key(),
                netns: netns.clone(),
                mtu: conf.mtu,
                pod,
                pod_namespace,
                pod_name,
                labels,
                ports,
                aliases,
                name,
                network: conf.network.clone(),
            });
            match agent(&socket, &req, ErrorCode::TryAgainLater)? {
                Response::Added(a) => {
                    let dns = merge_dns(conf.dns.clone(), a.dns.clone());
                    let result = success(&a, &netns, dns);
                    Ok(result.to_json(version).to_string())
                }
                other => Err(unexpected(other)),
            }
        }
        Command::Del => {
            let req = Request::Del(DelRequest {
                key: key(),
                netns: env.netns.clone(),
            });
            expect_done(agent(&socket, &req, ErrorCode::TryAgainLater)?)
        }
        Command::Check => {
            let prev = conf.prev_result()?.ok_or_else(|| {
                CniError::new(ErrorCode::InvalidConfig, "prevResult: required for CHECK")
            })?;
            let ifname = env.ifname.clone().expect("validated for CHECK");
            let expect = prev
                .ips
                .iter()
                .filter(|ip| {
                    ip.interface
                        .and_then(|i| prev.interfaces.get(i))
                        .is_some_and(|i| i.name == ifname && i.sandbox.is_some())
                })
                .map(|ip| ip.address)
                .collect();
            let req = Request::Check(CheckRequest {
                key: key(),
                netns: env.netns.clone().expect("validated for CHECK"),
                expect,
            });
            expect_done(agent(&socket, &req, ErrorCode::TryAgainLater)?)
        }
        Command::Gc => {
            require_1_1(version, "GC")?;
            let valid = conf.valid_attachments.clone().ok_or_else(|| {
                // Without the list every attachment would look stale.
                CniError::new(
                    ErrorCode::InvalidConfig,
                    "cni.dev/valid-attachments: required for GC",
                )
            })?;
            let req = Request::Gc(GcRequest {
                network: conf.name.clone(),
                valid: valid
                    .into_iter()
                    .map(|a| (a.container_id, a.ifname))
                    .collect(),
            });
            match agent(&socket, &req, ErrorCode::TryAgainLater)? {
                Response::Collected { .. } => Ok(String::new()),
                other => Err(unexpected(other)),
            }
        }
        Command::Status => {
            require_1_1(version, "STATUS")?;
            match agent(&socket, &Request::Status, ErrorCode::NotAvailable)? {
                Response::Status(s) => {
                    // Full blocks are no obstacle to a node that can lease another.
                    if !s.can_claim_more && s.blocks.iter().all(|b| b.used >= b.capacity) {
                        Err(CniError::new(
                            ErrorCode::NotAvailable,
                            format!("node {} has no free pod address", s.node_name),
                        ))
                    } else {
                        Ok(String::new())
                    }
                }
                other => Err(unexpected(other)),
            }
        }
    }
}

fn require_1_1(v: CniVersion, what: &str) -> Result<(), CniError> {
    if v < CniVersion::V1_1_0 {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "{what} needs cniVersion 1.1.0; the config says {}",
                v.as_str()
            ),
        ));
    }
    Ok(())
}

/// Calls the agent; an unreachable agent becomes `unreachable_code` and
/// any error the agent reports is passed through as it is.
fn agent(
    socket: &std::path::Path,
    req: &Request,
    unreachable_code: ErrorCode,
) -> Result<Response, CniError> {
    match call(socket, req) {
        Ok(Response::Error(e)) => Err(e),
        Ok(r) => Ok(r),
        Err(e @ ClientError::Unreachable(_)) => Err(CniError::new(unreachable_code, e.to_string())),
        Err(e @ ClientError::Exchange(_)) => {
            Err(CniError::new(ErrorCode::TryAgainLater, e.to_string()))
        }
    }
}

fn expect_done(r: Response) -> Result<String, CniError> {
    match r {
        Response::Done => Ok(String::new()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(r: Response) -> CniError {
    CniError::new(
        ErrorCode::AgentProtocol,
        format!("unexpected reply from the agent: {r:?}"),
    )
}

/// What the configuration says of DNS wins, field by field: an operator
/// who names resolvers or search domains in the network configuration
/// means them. The rest comes from the agent's name service.
fn merge_dns(conf: Option<Dns>, agent: Option<Dns>) -> Dns {
    let conf = conf.unwrap_or_default();
    let agent = agent.unwrap_or_default();
    // Resolvers of the operator's own (kube-dns) come with their own
    // search list and options, or none: ours would send every short name
    // through extra lookups there.
    if !conf.nameservers.is_empty() {
        return conf;
    }
    Dns {
        nameservers: if conf.nameservers.is_empty() {
            agent.nameservers
        } else {
            conf.nameservers
        },
        domain: conf.domain.or(agent.domain),
        search: if conf.search.is_empty() {
            agent.search
        } else {
            conf.search
        },
        options: if conf.options.is_empty() {
            agent.options
        } else {
            conf.options
        },
    }
}

fn success(a: &Added, netns: &std::path::Path, dns: Dns) -> SuccessResult {
    SuccessResult {
        interfaces: vec![
            Interface {
                name: a.host_ifname.clone(),
                mac: a.host_mac.clone(),
                sandbox: None,
                mtu: Some(a.mtu),
            },
            Interface {
                name: a.container_ifname.clone(),
                mac: a.container_mac.clone(),
                sandbox: Some(netns.display().to_string()),
                mtu: Some(a.mtu),
            },
        ],
        ips: a
            .addresses
            .iter()
            .map(|addr| IpConfig {
                address: *addr,
                gateway: Some(gateway_for(addr.addr())),
                interface: 1,
            })
            .collect(),
        routes: if a.routes.is_empty() {
            a.addresses
                .iter()
                .map(|addr| Route {
                    dst: default_route(addr.addr()),
                    gw: Some(gateway_for(addr.addr())),
                })
                .collect()
        } else {
            a.routes
                .iter()
                .map(|dst| Route {
                    dst: *dst,
                    gw: Some(gateway_for(dst.addr())),
                })
                .collect()
        },
        dns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> (serde_json::Value, i32) {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let o = run(|k| m.get(k).cloned(), stdin.as_bytes());
        let v = if o.stdout.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&o.stdout).unwrap()
        };
        (v, o.exit_code)
    }

    const CONF: &str =
        r#"{"cniVersion":"1.0.0","name":"n","type":"muslin","socket":"/nonexistent/muslin.sock"}"#;
    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn version_needs_no_agent() {
        let (v, code) = run_with(
            &[("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy")],
            r#"{"cniVersion":"1.0.0"}"#,
        );
        assert_eq!(code, 0);
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn agent_down_is_try_again_later_naming_socket() {
        let (v, code) = run_with(&ADD, CONF);
        assert_eq!(code, 1);
        assert_eq!(v["code"], 11);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["msg"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/muslin.sock"));
        let status = CONF.replace("1.0.0", "1.1.0");
        let (v, _) = run_with(&[("CNI_COMMAND", "STATUS")], &status);
        assert_eq!(v["code"], 50);
    }

    #[test]
    fn over_long_input_fails_before_the_agent_is_asked() {
        // CONF's socket does not exist: asking the agent would give 11.
        let huge = CONF.replace(r#""n""#, &format!("{:?}", "n".repeat(MAX_CONFIG_BYTES)));
        let (v, _) = run_with(&ADD, &huge);
        assert_eq!(v["code"], 7, "{v}");
        assert!(v["msg"].as_str().unwrap().contains("1048576"), "{v}");
        let long_name = CONF.replace(r#""n""#, &format!("{:?}", "n".repeat(300)));
        let (v, _) = run_with(&ADD, &long_name);
        assert_eq!(v["code"], 7, "{v}");
        assert!(v["msg"].as_str().unwrap().starts_with("name:"), "{v}");
        let long_path = format!("/run/netns/{}", "x".repeat(5000));
        let env = [ADD[0], ADD[1], ("CNI_NETNS", &long_path), ADD[3]];
        let (v, _) = run_with(&env, CONF);
        assert_eq!(v["code"], 4, "{v}");
        assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"), "{v}");
    }

    #[test]
    fn bad_labels_and_pod_args_fail_before_the_agent_is_asked() {
        // CONF's socket does not exist: asking the agent would give 11.
        let long = "k".repeat(300);
        let conf = CONF.replace(
            "}",
            &format!(r#","args":{{"cni":{{"labels":[{{"key":"{long}","value":"v"}}]}}}}}}"#),
        );
        let (v, _) = run_with(&ADD, &conf);
        assert_eq!(v["code"], 7, "{v}");
        assert!(
            v["msg"]
                .as_str()
                .unwrap()
                .starts_with("args.cni.labels[0].key:"),
            "{v}"
        );
        let args = format!("K8S_POD_NAME={}", "p".repeat(300));
        let mut env = ADD.to_vec();
        env.push(("CNI_ARGS", &args));
        let (v, _) = run_with(&env, CONF);
        assert_eq!(v["code"], 4, "{v}");
        assert!(v["msg"].as_str().unwrap().contains("K8S_POD_NAME"), "{v}");
    }

    #[test]
    fn every_address_is_in_the_result_with_its_familys_gateway() {
        let a = Added {
            host_ifname: "msl1".into(),
            host_mac: "ee:ee:ee:ee:ee:ee".into(),
            container_ifname: "eth0".into(),
            container_mac: "02:00:00:00:00:01".into(),
            addresses: vec![
                "10.244.1.5/32".parse().unwrap(),
                "fd00::5/128".parse().unwrap(),
            ],
            mtu: 1450,
            routes: vec![],
            dns: None,
        };
        let r = success(&a, std::path::Path::new("/run/netns/x"), Dns::default())
            .to_json(CniVersion::V1_1_0);
        assert_eq!(r["ips"][0]["address"], "10.244.1.5/32");
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(r["ips"][1]["address"], "fd00::5/128");
        assert_eq!(r["ips"][1]["gateway"], "fe80::1");
        assert_eq!(r["routes"][1]["dst"], "::/0");
    }

    #[test]
    fn read_config_stops_one_byte_past_the_limit() {
        let input = vec![b' '; 3 * MAX_CONFIG_BYTES];
        let got = read_config(&input[..]).unwrap();
        assert_eq!(got.len(), MAX_CONFIG_BYTES + 1);
    }

    #[test]
    fn errors_carry_spec_codes() {
        let (v, _) = run_with(&ADD, "{not json");
        assert_eq!(v["code"], 6);
        let (v, _) = run_with(&ADD[..3], CONF);
        assert_eq!(v["code"], 4);
        let (v, _) = run_with(&ADD, &CONF.replace("1.0.0", "0.2.0"));
        assert_eq!(v["code"], 1);
        let (v, _) = run_with(&[("CNI_COMMAND", "GC")], CONF);
        assert_eq!(v["code"], 1, "GC needs 1.1.0");
        let (v, _) = run_with(&[("CNI_COMMAND", "GC")], &CONF.replace("1.0.0", "1.1.0"));
        assert_eq!(v["code"], 7, "GC needs the valid list");
        let check = [("CNI_COMMAND", "CHECK"), ADD[1], ADD[2], ADD[3]];
        let (v, _) = run_with(&check, CONF);
        assert!(v["msg"].as_str().unwrap().contains("prevResult"));
    }

    #[test]
    fn the_configurations_dns_wins() {
        let agent = Dns {
            nameservers: vec!["169.254.53.1".parse().unwrap()],
            domain: None,
            search: vec!["muslin.internal".into()],
            options: vec!["ndots:2".into()],
        };
        let conf = Dns {
            nameservers: vec!["10.96.0.10".parse().unwrap()],
            ..Default::default()
        };
        // Resolvers of its own: the configuration's block as it is.
        assert_eq!(merge_dns(Some(conf.clone()), Some(agent.clone())), conf);
        // Only a search list: that, with the agent's resolver.
        let search = Dns {
            search: vec!["example.org".into()],
            ..Default::default()
        };
        let d = merge_dns(Some(search), Some(agent.clone()));
        assert_eq!(d.nameservers, agent.nameservers);
        assert_eq!(d.search, vec!["example.org".to_string()]);
        assert_eq!(d.options, agent.options);
        assert_eq!(merge_dns(None, Some(agent.clone())), agent);
        assert_eq!(merge_dns(None, None), Dns::default());
    }
}
