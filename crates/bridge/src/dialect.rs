//! The bot protocols on the wire: Exotel and Twilio Media Streams messages, built and parsed.
