//! The replicated log: openraft over sled, carrying `state` commands between the managers.
