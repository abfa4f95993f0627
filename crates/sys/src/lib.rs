//! The kernel seam: network namespaces, links, veth pairs, addresses, routes, neighbours,
//! VXLAN devices and sysctls. The only crate besides the dataplanes that makes syscalls.
