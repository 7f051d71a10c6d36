//! The playout queue: bot audio re-framed into 20 ms frames, with marks and clear; and the chunker for caller audio.
