//! The etcd v3 backend (`etcd://host:port[,host:port…]` or `http://host:port`).

/// Server flags a Serval etcd needs beyond the defaults: a CLI apply of thousands of resources
/// is one transaction (etcd's default `--max-txn-ops` is 128 and `--max-request-bytes` 1.5 MiB).
pub const SERVER_FLAGS: &[&str] = &[
    "--max-txn-ops=1000000",
    "--max-request-bytes=268435456",
    "--quota-backend-bytes=8589934592",
];
