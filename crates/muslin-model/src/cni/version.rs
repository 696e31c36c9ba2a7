use super::{CniError, ErrorCode};

/// Spec versions Muslin speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// A negotiated spec version. The result's shape depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        match s {
            "0.4.0" => Ok(CniVersion::V0_4_0),
            "1.0.0" => Ok(CniVersion::V1_0_0),
            "1.1.0" => Ok(CniVersion::V1_1_0),
            other => Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!(
                    "cniVersion {other:?} is not supported; supported versions: {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    pub const LATEST: CniVersion = CniVersion::V1_1_0;
}

/// The reply to VERSION. Runtimes call it with arbitrary, even empty, stdin,
/// so a missing or unknown `cniVersion` is answered with our latest rather
/// than an error.
pub fn version_reply(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .and_then(|s| CniVersion::parse(&s).ok())
        .unwrap_or(CniVersion::LATEST);
    serde_json::json!({
        "cniVersion": asked.as_str(),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_others() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(CniVersion::parse(v).unwrap().as_str(), v);
        }
        for bad in ["0.3.1", "2.0.0", "", "1.1"] {
            let e = CniVersion::parse(bad).unwrap_err();
            assert_eq!(e.code, 1);
            assert!(e.msg.contains("1.1.0"), "lists supported: {}", e.msg);
        }
        assert!(CniVersion::V0_4_0 < CniVersion::V1_1_0);
    }

    #[test]
    fn version_reply_echoes_known_and_defaults_to_latest() {
        let v: serde_json::Value =
            serde_json::from_str(&version_reply(br#"{"cniVersion":"1.0.0"}"#)).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"][2], "1.1.0");
        for stdin in [&b""[..], b"{}", b"not json", br#"{"cniVersion":"9.9.9"}"#] {
            let v: serde_json::Value = serde_json::from_str(&version_reply(stdin)).unwrap();
            assert_eq!(v["cniVersion"], "1.1.0");
        }
    }
}
