//! The Kubernetes adapter: the `shorthorn.io` CRD types, the mirror of the log into those
//! objects (run by the Raft leader's manager), and spec edits turned into commands.

pub mod crd;
pub mod discovery;
pub mod edits;
pub mod mirror;
pub mod project;
