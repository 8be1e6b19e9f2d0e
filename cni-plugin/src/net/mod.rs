//! Kernel networking through rtnetlink: namespaces, links, the host bridge side and the
//! container side.

pub mod container;
pub mod garp;
pub mod host;
pub mod links;
pub mod netns;
pub mod retire;
