//! Everything about the servers behind a route: choosing a target among them.

pub mod balancer;
