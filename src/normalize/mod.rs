//! The edge's one reading of a request target: the canonical path and the one
//! host, settled before routing and before any policy, so that every later
//! phase and the upstream agree on what was asked for.

pub mod host;
pub mod path;
