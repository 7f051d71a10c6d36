//! Audio for voicegate: G.711, L16 and Opus codecs, packet-loss concealment and resampling.
//!
//! Everything here is plain data and functions with no I/O, so the media tasks can call it per
//! 20 ms frame: callers pass output buffers (or the struct reuses its own), nothing allocates per
//! frame once set up, and no input from the network (odd lengths, empty or corrupt packets) can
//! make a call panic.

mod error;
pub mod g711;
pub mod l16;
pub mod opus;
pub mod plc;
pub mod resample;

#[cfg(test)]
mod testutil;

pub use error::AudioError;
pub use opus::{OpusDecoder, OpusEncoder};
pub use plc::G711Plc;
pub use resample::Resampler;

#[cfg(test)]
mod tests {
    /// Media tasks run on a multi-threaded runtime, so every stateful type must be `Send`.
    #[test]
    fn stateful_types_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<crate::OpusEncoder>();
        assert_send::<crate::OpusDecoder>();
        assert_send::<crate::Resampler>();
        assert_send::<crate::G711Plc>();
        assert_send::<crate::AudioError>();
    }
}
