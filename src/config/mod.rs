//! The configuration: the file format (`schema`, `units`), reading it with
//! `${ENV}` substitution and positions (`load`), checking it whole (`validate`), and
//! turning it into the runtime snapshot (`compile`).

mod env;
pub mod load;
mod positions;
pub mod schema;
pub(crate) mod suggest;
pub mod units;
pub mod validate;
pub mod values;

pub use load::{
    ConfigError, ConfigErrors, LoadedConfig, load_file, load_file_with_env, load_str,
    load_str_with_env,
};
