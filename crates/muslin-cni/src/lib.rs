//! The CNI plugin. It validates what the runtime hands over, makes one
//! round trip to the agent and renders the answer in the spec version the
//! runtime asked for. It is synchronous and small on purpose: it runs once
//! per container start, so its start-up time is part of every ADD.

mod client;
mod plugin;

pub use client::{call, ClientError};
pub use plugin::{read_config, run, Outcome};
