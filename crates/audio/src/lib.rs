//! Audio for voicegate: G.711, L16 and Opus codecs, packet-loss concealment and resampling.
