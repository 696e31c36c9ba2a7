//! The CNI protocol, as pure data: environment, network config, results,
//! errors and version negotiation (spec 1.1.0; configs of 0.4.0, 1.0.0 and
//! 1.1.0 are accepted).

mod args;
mod config;
mod env;
mod error;
mod result;
mod version;

pub use args::{parse_cni_args, pod_identity};
pub use config::{
    cni_version_hint, GcAttachment, NetConf, PrevResult, LABELS_MAX, LABELS_TOTAL_MAX,
    LABEL_KEY_MAX, LABEL_VALUE_MAX, MAX_CONFIG_BYTES,
};
pub use env::{Command, Env, ENV_LIMITS};
pub use error::{CniError, ErrorCode};
pub use result::{Dns, Interface, IpConfig, Route, SuccessResult};
pub use version::{version_reply, CniVersion, SUPPORTED_VERSIONS};
