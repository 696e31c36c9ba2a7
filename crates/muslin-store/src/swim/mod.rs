//! Gossip that scales: SWIM membership and failure detection (foca),
//! changes spread as broadcasts on its packets, and anti-entropy over a
//! digest of fixed size. See `engine` for the costs.

mod engine;
pub(crate) mod state;
pub(crate) mod wire;

pub(crate) use engine::{Engine, EngineConfig, Wire};
pub(crate) use wire::is_digest;
