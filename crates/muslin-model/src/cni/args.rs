use std::collections::BTreeMap;

use super::{CniError, ErrorCode};

/// Parses `CNI_ARGS` (`K=V;K2=V2`). Runtimes pass keys we do not use
/// (`IgnoreUnknown`, `K8S_POD_NAME`, ...), so every well-formed key is
/// accepted; only a pair without `=` or with an empty key is an error.
pub fn parse_cni_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS: {pair:?} is not of the form KEY=VALUE"),
            ));
        };
        if k.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS: {pair:?} has an empty key"),
            ));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Kubernetes' bounds: a namespace is a DNS label, a pod name a DNS
/// subdomain. Both travel in the endpoint's cluster record.
pub const POD_NAMESPACE_MAX: usize = 63;
pub const POD_NAME_MAX: usize = 253;

/// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from parsed `CNI_ARGS`, each
/// bounded; an oversized one is invalid input naming the variable.
pub fn pod_identity(
    args: &BTreeMap<String, String>,
) -> Result<(Option<String>, Option<String>), CniError> {
    let get = |var: &str, limit: usize| -> Result<Option<String>, CniError> {
        match args.get(var) {
            Some(v) if v.len() > limit => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "CNI_ARGS {var}: {} bytes long; at most {limit} are accepted",
                    v.len()
                ),
            )),
            Some(v) if !v.is_empty() => Ok(Some(v.clone())),
            _ => Ok(None),
        }
    };
    Ok((
        get("K8S_POD_NAMESPACE", POD_NAMESPACE_MAX)?,
        get("K8S_POD_NAME", POD_NAME_MAX)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_runtime_args() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=default;")
            .unwrap();
        assert_eq!(a["K8S_POD_NAME"], "web-0");
        assert_eq!(a.len(), 3);
        assert!(parse_cni_args("").unwrap().is_empty());
        assert_eq!(parse_cni_args("A=b=c").unwrap()["A"], "b=c");
    }

    #[test]
    fn pod_identity_is_bounded() {
        let a = parse_cni_args("K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=shop").unwrap();
        assert_eq!(
            pod_identity(&a).unwrap(),
            (Some("shop".into()), Some("web-0".into()))
        );
        assert_eq!(pod_identity(&BTreeMap::new()).unwrap(), (None, None));
        let long = format!("K8S_POD_NAMESPACE={}", "n".repeat(POD_NAMESPACE_MAX + 1));
        let e = pod_identity(&parse_cni_args(&long).unwrap()).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            e.msg.contains("K8S_POD_NAMESPACE") && e.msg.contains("63"),
            "{e}"
        );
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse_cni_args("novalue").unwrap_err().code, 4);
        assert_eq!(parse_cni_args("=x").unwrap_err().code, 4);
    }
}
