//! SDP offer/answer (RFC 4566, RFC 3264) for audio calls.
