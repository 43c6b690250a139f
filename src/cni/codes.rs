//! podnet's own error codes of `podnet-cni`, from 100 up (the spec
//! leaves those to plugins), beside the spec's in [`CniError`](super::CniError).

/// The interface asked for exists in the namespace already.
pub const INTERFACE_EXISTS: u32 = 100;
/// The attachment (container ID, interface) exists already.
pub const ATTACHMENT_EXISTS: u32 = 101;
/// A static address asked for is taken.
pub const ADDRESS_TAKEN: u32 = 102;
/// The pool has no free address.
pub const POOL_EXHAUSTED: u32 = 103;
/// A host port asked for is mapped already.
pub const PORT_IN_USE: u32 = 104;
/// IP forwarding is off and the configuration needs it.
pub const FORWARDING_OFF: u32 = 105;
/// The plugin lacks the privilege it needs (CAP_NET_ADMIN).
pub const NOT_PERMITTED: u32 = 106;
/// CHECK found the attachment not as it was made.
pub const BROKEN: u32 = 107;
/// The kernel refused a request (netlink, nf_tables, a system call).
pub const KERNEL: u32 = 108;
/// The network's DNS server (`dnsServer`) did not start.
pub const DNS_SERVER: u32 = 109;
