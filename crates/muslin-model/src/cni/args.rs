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
    fn rejects_malformed() {
        assert_eq!(parse_cni_args("novalue").unwrap_err().code, 4);
        assert_eq!(parse_cni_args("=x").unwrap_err().code, 4);
    }
}
