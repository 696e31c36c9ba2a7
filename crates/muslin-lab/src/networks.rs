//! The lab's side of the agent's networks: the `muslin network` commands it
//! runs and the CNI configuration a container joins a network with. Every
//! use of that interface is here, so a change to it is a change to this
//! file only. Pure: `ops` runs what these functions build.

use std::path::Path;

use serde_json::json;

use crate::plan::{ContainerMeta, NetworkPlan};
use crate::topology::DEFAULT_NETWORK;

/// `muslin network create` arguments (after the binary) for `net`, sent to
/// the agent at `socket`.
pub fn create_args(net: &NetworkPlan, socket: &Path) -> Vec<String> {
    let mut a = vec![
        "network".to_string(),
        "create".into(),
        net.name.clone(),
        "--subnet".into(),
        net.subnet.to_string(),
    ];
    if let Some(b) = net.block_size {
        a.extend(["--block-size".into(), b.to_string()]);
    }
    if let Some(b) = &net.backend {
        a.extend(["--backend".into(), b.clone()]);
    }
    if let Some(v) = net.vni {
        a.extend(["--vni".into(), v.to_string()]);
    }
    if net.isolated_from_host {
        a.push("--isolated-from-host".into());
    }
    a.extend(["--socket".into(), socket.display().to_string()]);
    a
}

/// `muslin network list` arguments: what the agent at `socket` knows.
pub fn list_args(socket: &Path) -> Vec<String> {
    [
        "network",
        "list",
        "--json",
        "--socket",
        &socket.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// The network names in `muslin network list --json` output: an array of
/// objects with at least a `name`.
pub fn listed(json: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("unreadable network list ({e}): {json}"))?;
    let items = v
        .as_array()
        .ok_or_else(|| format!("the network list is not a JSON array: {json}"))?;
    items
        .iter()
        .map(|n| {
            n["name"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("a network without a name in the list: {n}"))
        })
        .collect()
}

/// The CNI network configuration of an attachment to `network`, with the
/// container's labels, named ports and aliases in `args.cni` as a runtime
/// passes them. The default network, and a container with neither, keep the
/// configuration of labs before them.
pub fn cni_conf(socket: &Path, network: &str, meta: &ContainerMeta) -> String {
    let mut conf = if network == DEFAULT_NETWORK {
        json!({"cniVersion": "1.1.0", "name": "muslin", "type": "muslin", "socket": socket})
    } else {
        json!({"cniVersion": "1.1.0", "name": network, "type": "muslin", "socket": socket, "network": network})
    };
    let mut cni = serde_json::Map::new();
    if !meta.labels.is_empty() {
        let labels: Vec<_> = meta
            .labels
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        cni.insert("labels".into(), labels.into());
    }
    if !meta.ports.is_empty() {
        let ports: Vec<_> = meta
            .ports
            .iter()
            .map(|(name, p)| {
                json!({"name": name, "port": p.port, "protocol": p.protocol.name().to_uppercase()})
            })
            .collect();
        cni.insert("ports".into(), ports.into());
    }
    if !meta.aliases.is_empty() {
        cni.insert("aliases".into(), json!(meta.aliases));
    }
    if !cni.is_empty() {
        conf["args"] = json!({ "cni": cni });
    }
    conf.to_string()
}

/// The interface of a container's `i`-th network (0-based): eth0, eth1, ...
pub fn ifname(i: usize) -> String {
    format!("eth{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str) -> NetworkPlan {
        NetworkPlan {
            name: name.into(),
            subnet: "10.50.0.0/16".parse().unwrap(),
            block_size: None,
            backend: None,
            vni: None,
            isolated_from_host: false,
        }
    }

    #[test]
    fn create_passes_only_what_the_topology_sets() {
        let s = Path::new("/run/muslin/lab/x/h1/agent.sock");
        assert_eq!(
            create_args(&net("red"), s).join(" "),
            "network create red --subnet 10.50.0.0/16 --socket /run/muslin/lab/x/h1/agent.sock"
        );
        let mut n = net("blue");
        n.block_size = Some(26);
        n.backend = Some("vxlan".into());
        n.vni = Some(5000);
        n.isolated_from_host = true;
        assert_eq!(
            create_args(&n, s).join(" "),
            "network create blue --subnet 10.50.0.0/16 --block-size 26 --backend vxlan \
             --vni 5000 --isolated-from-host --socket /run/muslin/lab/x/h1/agent.sock"
        );
        assert_eq!(
            list_args(s).join(" "),
            "network list --json --socket /run/muslin/lab/x/h1/agent.sock"
        );
    }

    #[test]
    fn list_output_is_read_for_names() {
        assert_eq!(
            listed(r#"[{"name":"red","subnet":"10.50.0.0/16"},{"name":"blue"}]"#).unwrap(),
            ["red", "blue"]
        );
        assert!(listed("[]").unwrap().is_empty());
        assert!(listed("{}").unwrap_err().contains("not a JSON array"));
        assert!(listed("[{\"subnet\":1}]")
            .unwrap_err()
            .contains("without a name"));
        assert!(listed("oops").unwrap_err().contains("unreadable"));
    }

    #[test]
    fn cni_conf_names_the_network() {
        let s = Path::new("/s.sock");
        let v = |t: String| serde_json::from_str::<serde_json::Value>(&t).unwrap();
        assert_eq!(
            v(cni_conf(s, "default", &ContainerMeta::default())),
            json!({"cniVersion": "1.1.0", "name": "muslin", "type": "muslin", "socket": "/s.sock"})
        );
        assert_eq!(
            v(cni_conf(s, "red", &ContainerMeta::default())),
            json!({"cniVersion": "1.1.0", "name": "red", "type": "muslin", "socket": "/s.sock", "network": "red"})
        );
        // Labels and named ports go where the plugin reads them.
        let meta = ContainerMeta {
            labels: [("app", "web"), ("tier", "")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            namespace: Some("shop".into()),
            ports: [
                ("dns", muslin_model::policy::Protocol::Udp, 53),
                ("http", muslin_model::policy::Protocol::Tcp, 8080),
            ]
            .into_iter()
            .map(|(n, protocol, port)| {
                (
                    n.to_string(),
                    muslin_model::policy::NamedPort { protocol, port },
                )
            })
            .collect(),
            aliases: vec!["web".into(), "front-shop".into()],
        };
        let text = cni_conf(s, "red", &meta);
        assert_eq!(
            v(text.clone())["args"],
            json!({"cni": {
                "labels": [{"key": "app", "value": "web"}, {"key": "tier", "value": ""}],
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "http", "port": 8080, "protocol": "TCP"},
                ],
                "aliases": ["web", "front-shop"],
            }})
        );
        let (conf, _) = muslin_model::cni::NetConf::parse(text.as_bytes()).unwrap();
        assert_eq!(conf.labels().unwrap(), meta.labels);
        assert_eq!(conf.ports().unwrap(), meta.ports);
        assert_eq!(conf.aliases().unwrap(), meta.aliases);
        assert_eq!(ifname(0), "eth0");
        assert_eq!(ifname(2), "eth2");
    }
}
