//! The one error type of the crate.

use thiserror::Error;

/// What went wrong in a codec, concealment or resampling call.
///
/// Every variant says which input was wrong, so a caller can log it without more context. Packet
/// errors are expected in normal operation (they come from the network); the caller drops the
/// packet or conceals it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AudioError {
    /// A sample rate this crate does not handle for the given use.
    #[error("unsupported sample rate {rate} Hz for {what}")]
    UnsupportedSampleRate {
        /// The rejected rate.
        rate: u32,
        /// Which component rejected it (for example "the resampler").
        what: &'static str,
    },

    /// The input frame has a different length from the one the component was set up for.
    #[error("frame of {got} samples where {expected} were expected")]
    FrameLength {
        /// Samples the component needs per call.
        expected: usize,
        /// Samples that were passed.
        got: usize,
    },

    /// The PCM frame passed to the Opus encoder is not 2.5, 5, 10, 20, 40 or 60 ms long.
    #[error("{samples} samples at {rate} Hz is not an Opus frame duration (2.5, 5, 10, 20, 40 or 60 ms)")]
    OpusFrameDuration {
        /// Samples passed.
        samples: usize,
        /// The encoder's sample rate.
        rate: u32,
    },

    /// The caller's output buffer cannot hold the result.
    #[error("output buffer of {got} samples or bytes is too small: {needed} needed")]
    OutputTooSmall {
        /// Capacity the call needs.
        needed: usize,
        /// Capacity that was passed.
        got: usize,
    },

    /// An Opus packet with no bytes: nothing to decode (use concealment instead).
    #[error("empty Opus packet")]
    EmptyPacket,

    /// libopus refused the call: for a decode this usually means a corrupt or truncated packet.
    #[error("Opus {during} failed: {}", opus_detail(source))]
    Opus {
        /// The operation that failed ("decode", "encode", "encoder setup", ...).
        during: &'static str,
        /// The error libopus reported.
        #[source]
        source: audiopus::Error,
    },

    /// The resampler parameters do not describe a whole number of output samples per frame, or
    /// rubato refused them.
    #[error("cannot resample {from_hz} Hz to {to_hz} Hz in frames of {frame} samples: {reason}")]
    ResamplerSetup {
        /// Input rate.
        from_hz: u32,
        /// Output rate.
        to_hz: u32,
        /// Requested input frame length.
        frame: usize,
        /// Why it was refused.
        reason: &'static str,
    },

    /// rubato refused to process a frame (should not happen once set up; kept as an error rather
    /// than a panic).
    #[error("resampling failed: {0}")]
    Resample(#[source] rubato::ResampleError),
}

/// libopus's own description of an error. audiopus's `Display` for a libopus code repeats the
/// description twice, so the code is described directly.
fn opus_detail(error: &audiopus::Error) -> String {
    match error {
        audiopus::Error::Opus(code) => code.to_string(),
        other => other.to_string(),
    }
}
