//! The jitter buffer: reorders, drops duplicates and late packets, detects loss, adapts its depth.
