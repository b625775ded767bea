//! `server`: listeners (addresses, TLS), the admin API, limits and trusted proxies.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::Checker;
use crate::config::positions::{child, item};
use crate::config::schema::{Config, ListenerTls};
use crate::config::suggest;

impl Checker {
    pub(super) fn server(&mut self, config: &Config) {
        let server = &config.server;
        if server.listeners.is_empty() {
            self.err("server.listeners", "at least one listener is needed");
        }
        let mut names = HashSet::new();
        for (i, l) in server.listeners.iter().enumerate() {
            let at = item("server.listeners", i);
            if l.name.is_empty() {
                self.err(child(&at, "name"), "a listener name cannot be empty");
            } else if !names.insert(l.name.as_str()) {
                self.err(
                    child(&at, "name"),
                    format!("duplicate listener name `{}`", l.name),
                );
            }
            self.bind(&child(&at, "bind"), &l.bind);
            if l.redirect_to_https && l.tls.is_some() {
                self.err(
                    child(&at, "redirect_to_https"),
                    "this listener already serves TLS; redirect_to_https is for a plain one (port 80)",
                );
            }
            if let Some(tls) = &l.tls {
                self.listener_tls(&child(&at, "tls"), tls);
            }
            if let Some(pp) = &l.proxy_protocol {
                let at = child(&at, "proxy_protocol");
                if pp.trusted.is_empty() {
                    self.err(
                        child(&at, "trusted"),
                        "list the balancers that may send the header (IPs or CIDRs)",
                    );
                }
                for (i, net) in pp.trusted.iter().enumerate() {
                    if let Err(e) = crate::config::values::parse_net(net) {
                        self.err(item(&child(&at, "trusted"), i), e);
                    }
                }
                if pp.timeout.is_some_and(|t| t.get().is_zero()) {
                    self.err(child(&at, "timeout"), "must be above zero");
                }
            }
        }
        if let Some(admin) = &server.admin {
            self.bind("server.admin.bind", &admin.bind);
            if let Some(token) = &admin.token {
                if token.len() < 16 {
                    self.err(
                        "server.admin.token",
                        "must be at least 16 characters (use a long random value)",
                    );
                } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    self.err(
                        "server.admin.token",
                        "must be printable ASCII without spaces (it is sent as a bearer token)",
                    );
                }
            }
        }

        let limits = &server.limits;
        let kib = 1024;
        if !(kib..=1024 * kib).contains(&limits.max_header_bytes.0) {
            self.err(
                "server.limits.max_header_bytes",
                format!(
                    "must be between 1KiB and 1MiB, got {}",
                    limits.max_header_bytes
                ),
            );
        }
        if let Some(buffer) = limits.read_buffer {
            // hyper's own floor is 8 KiB (below it, it panics); a head within
            // max_header_bytes must fit, to reach the proxy.
            let floor = limits.max_header_bytes.0.max(8 * kib);
            if !(floor..=64 * 1024 * kib).contains(&buffer.0) {
                self.err(
                    "server.limits.read_buffer",
                    format!(
                        "must be at least 8KiB and max_header_bytes ({}), and at most 64MiB, got {buffer}",
                        limits.max_header_bytes
                    ),
                );
            }
        }
        if limits.max_connections == 0 {
            self.err("server.limits.max_connections", "must be at least 1");
        }
        if limits.max_body_bytes.0 == 0 {
            self.err(
                "server.limits.max_body_bytes",
                "0 would refuse every request body; for no practical limit use a large size like 1GiB",
            );
        }
        for (key, d) in [
            ("header_read_timeout", limits.header_read_timeout),
            ("body_read_timeout", limits.body_read_timeout),
            ("idle_timeout", limits.idle_timeout),
        ] {
            if d.get().is_zero() {
                self.err(child("server.limits", key), "must be above zero");
            }
        }

        for (i, proxy) in server.trusted_proxies.iter().enumerate() {
            if proxy.parse::<IpNet>().is_err() && proxy.parse::<IpAddr>().is_err() {
                self.err(
                    item("server.trusted_proxies", i),
                    format!("expected an IP address or a CIDR like 10.0.0.0/8, got `{proxy}`"),
                );
            }
        }
    }

    pub(super) fn listener_tls(&mut self, at: &str, tls: &ListenerTls) {
        use crate::tls::{ALPN_PROTOCOLS, MIN_VERSIONS};
        if tls.certificates.is_empty() {
            self.err(
                child(at, "certificates"),
                "at least one certificate is needed; the first is the default",
            );
        }
        if let Some(v) = &tls.min_version
            && !MIN_VERSIONS.contains(&v.as_str())
        {
            self.err(
                child(at, "min_version"),
                format!("expected \"1.2\" or \"1.3\", got `{v}`"),
            );
        }
        if let Some(alpn) = &tls.alpn {
            if alpn.is_empty() {
                self.err(
                    child(at, "alpn"),
                    "give at least one of h2, http/1.1 (or leave alpn out for both)",
                );
            }
            for (i, p) in alpn.iter().enumerate() {
                if !ALPN_PROTOCOLS.contains(&p.as_str()) {
                    self.err(
                        item(&child(at, "alpn"), i),
                        format!(
                            "unknown ALPN protocol `{p}`; expected h2 or http/1.1{}",
                            suggest::hint(p, ALPN_PROTOCOLS.iter().copied())
                        ),
                    );
                }
            }
        }
    }

    pub(super) fn bind(&mut self, path: &str, bind: &str) {
        if bind.parse::<SocketAddr>().is_err() {
            self.err(
                path,
                format!("expected an address like 127.0.0.1:8080 or [::1]:8080, got `{bind}`"),
            );
        }
    }
}
