//! The Kubernetes adapter: CRD types, the log -> CRD mirror, CRD spec edits -> commands (not built yet).
