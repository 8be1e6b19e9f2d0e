//! hostnet's tests against the kernel, each in a network namespace of its own.

mod nftables;
