//! Operating a relay: the admin API and its dashboard, the Prometheus and health
//! endpoints, and the tokens these use. The drain gate and the traffic recorder the
//! admin API controls sit on the data path ([`crate::ingest::drain`],
//! [`crate::ingest::record`]).

pub mod admin;
pub mod dashboard;
pub mod lag;
pub mod probes;
pub mod token;
