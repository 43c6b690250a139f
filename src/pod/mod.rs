//! The workload layer on top of a sandbox. For now: port mappings from the
//! host namespace to a sandbox ([`ports`]).

pub(crate) mod ports;
