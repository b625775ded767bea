//! The configuration: the file format (`schema`, `units`), reading it with
//! `${ENV}` substitution and positions (`load`), checking it whole (`validate`), and
//! turning it into the runtime snapshot (`compile`).

// A config error must be a message, never a crash.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod env;
pub mod compile;
pub mod load;
mod positions;
pub mod schema;
mod suggest;
pub mod units;
pub mod validate;

pub use load::{
    ConfigError, ConfigErrors, LoadedConfig, load_file, load_file_with_env, load_str,
    load_str_with_env,
};
