//! Golden and diff tests of the planners. Everything here is pure, so the
//! whole output of each planner is pinned without root; the one check
//! against the real `nft` is replayed from a recorded listing
//! (`tests/nft-roundtrip.sh` re-records it).

mod attachment;
mod common;
mod data_plane;
mod golden;
mod nft;
mod repair;
