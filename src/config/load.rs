//! TEMPORARY loader; replaced by the real one from the config work.
use std::path::{Path, PathBuf};

use super::schema::Config;

pub struct LoadedConfig {
    pub config: Config,
    pub source: String,
    pub version: String,
    pub files: Vec<PathBuf>,
}
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}: {}: {}", self.file, self.line, self.column, self.path, self.message)
    }
}
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);
impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}
impl std::error::Error for ConfigErrors {}
pub fn load_str(text: &str, source: &str) -> Result<LoadedConfig, ConfigErrors> {
    load_str_with_env(text, source, &|k| std::env::var(k).ok())
}
pub fn load_str_with_env(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigErrors> {
    let mut t = text.to_string();
    while let Some(start) = t.find("${") {
        let Some(end) = t[start..].find('}') else { break };
        let inner = t[start + 2..start + end].to_string();
        let (k, d) = inner.split_once(":-").unwrap_or((&inner, ""));
        let v = env(k).unwrap_or_else(|| d.to_string());
        t.replace_range(start..start + end + 1, &v);
    }
    let config: Config = serde_yaml::from_str(&t).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: source.into(),
            line: 0,
            column: 0,
            path: String::new(),
            message: e.to_string(),
        }])
    })?;
    Ok(LoadedConfig {
        config,
        source: source.into(),
        version: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(t.as_bytes())),
        files: vec![],
    })
}
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            path: String::new(),
            message: e.to_string(),
        }])
    })?;
    load_str(&text, &path.display().to_string())
}
