//! RTP media for voicegate: the UDP port pool and RTP legs (the echo leg for now).
