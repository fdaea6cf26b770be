//! The block data path: replica store and server, per-volume engine, wire protocol, NBD frontend.
