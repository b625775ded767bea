//! The configuration: the file format (`schema`, `units`, `values`), reading it
//! with `${ENV}` substitution and positions (`load`), and checking it whole
//! (`validate`). A leaf: it imports nothing of the gateway but `tls` (to check
//! certificates); turning a valid config into the runtime snapshot is
//! `snapshot::build`.

mod env;
pub mod htpasswd;
pub mod load;
mod positions;
pub mod redact;
pub mod schema;
pub(crate) mod suggest;
pub mod units;
pub mod validate;
pub mod values;

pub use load::{
    ConfigError, ConfigErrors, LoadedConfig, load_file, load_file_with_env, load_str,
    load_str_with_env,
};
