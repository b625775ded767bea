//! `cors.<name>`: origins, methods and headers of each CORS policy.

use super::{Checker, check_method};
use crate::config::positions::{child, item};
use crate::config::schema::Config;

impl Checker {
    pub(super) fn cors(&mut self, config: &Config) {
        use crate::config::values::{check_header_name, check_origin};
        for (name, c) in &config.cors {
            let at = child("cors", name);
            if c.allow_origins.is_empty() {
                self.err(
                    child(&at, "allow_origins"),
                    "list at least one origin (or \"*\")",
                );
            }
            for (i, o) in c.allow_origins.iter().enumerate() {
                if let Err(e) = check_origin(o) {
                    self.err(item(&child(&at, "allow_origins"), i), e);
                }
            }
            if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
                self.err(
                    child(&at, "allow_credentials"),
                    "cannot be true with allow_origins [\"*\"]: browsers reject that combination; list the origins instead",
                );
            }
            for (i, m) in c.allow_methods.iter().flatten().enumerate() {
                if let Err(e) = check_method(m) {
                    self.err(item(&child(&at, "allow_methods"), i), e);
                }
            }
            for key in ["allow_headers", "expose_headers"] {
                let list = if key == "allow_headers" {
                    &c.allow_headers
                } else {
                    &c.expose_headers
                };
                for (i, h) in list.iter().flatten().enumerate() {
                    if let Err(e) = check_header_name(h) {
                        self.err(item(&child(&at, key), i), e);
                    }
                }
            }
        }
    }
}
