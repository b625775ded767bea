//! tollgate: an API gateway reverse proxy.

pub mod config;
pub mod router;
