//! Reading a config file: YAML text -> `schema::Config`, with `${ENV}` substitution
//! and file:line:column positions for every error.
// (to be written)
