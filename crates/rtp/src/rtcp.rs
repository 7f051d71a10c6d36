//! RTCP (RFC 3550): sender and receiver reports, reception statistics and a MOS estimate.
