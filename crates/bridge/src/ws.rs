//! The WebSocket client to the bot: URL handling, TLS, Basic auth, handshake timeout and retry.
