//! RFC 3261 transaction state machines, free of I/O and of the clock.
