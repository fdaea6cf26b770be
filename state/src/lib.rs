//! The Shorthorn domain (not written yet).
