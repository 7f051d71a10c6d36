//! RFC 4733 telephone-events (DTMF) received and sent, and SIP INFO DTMF bodies.
