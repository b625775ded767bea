//! `ip_allow` / `ip_deny` (docs/guide/auth.md): CIDR lists checked against the client IP
//! (`PolicyContext::client_ip`, already taken through `server.trusted_proxies`).
//! A deny match always wins; with an allow list, only its addresses pass.

use std::net::IpAddr;

use ipnet::IpNet;

pub struct IpRules {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl IpRules {
    pub fn admits(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let r = IpRules {
            allow: nets(&["10.0.0.0/8"]),
            deny: nets(&["10.1.0.0/16"]),
        };
        assert!(r.admits("10.2.3.4".parse().unwrap()));
        assert!(!r.admits("10.1.3.4".parse().unwrap()));
        assert!(!r.admits("192.168.1.1".parse().unwrap()));
        assert!(r.admits("::ffff:10.2.3.4".parse().unwrap()));
        let deny_only = IpRules {
            allow: vec![],
            deny: nets(&["127.0.0.1/32"]),
        };
        assert!(!deny_only.admits("127.0.0.1".parse().unwrap()));
        assert!(deny_only.admits("127.0.0.2".parse().unwrap()));
    }
}
