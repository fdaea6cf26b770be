//! The CSI driver: Identity, Controller and Node services over a unix socket (not built yet).
