use serde::Serialize;

/// CNI error codes: the spec's well-known ones, then Muslin's own from 100.
/// The numbers are part of our public interface (README lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    /// Muslin: the agent failed in a way not covered below.
    Internal = 100,
    /// Muslin: no free address is left in the node's blocks.
    AddressesExhausted = 101,
    /// Muslin: CHECK found the attachment not as ADD left it.
    CheckFailed = 102,
    /// Muslin: the kernel refused an operation (netlink error).
    Kernel = 103,
    /// Muslin: the plugin and agent could not understand each other.
    AgentProtocol = 104,
    /// Muslin: the interface name is already taken in the container.
    InterfaceExists = 105,
}

/// The JSON a plugin prints on stdout when it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Renders the error object as the spec wants it, stamped with the
    /// version the runtime asked for.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut v = serde_json::to_value(self).expect("plain struct serializes");
        v["cniVersion"] = serde_json::Value::String(cni_version.to_string());
        v.to_string()
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}
