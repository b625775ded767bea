//! Response caching (RFC 9111): `caches` and the routes' `cache`.

pub mod control;
pub mod route;
pub mod shared;
pub mod store;
