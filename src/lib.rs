//! tollgate: an API gateway reverse proxy.

pub mod config;
pub mod router;
pub mod upstream;
