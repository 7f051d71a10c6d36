//! One call, one task: the task drives a `voicegate_call::Call` (which decides what the call
//! does) over this node's env ([`env::NodeEnv`]: the SIP core and the media tasks), feeding it
//! the call's SIP messages, media events and timers. Calls share no locks with each other.
//!
//! What a dialled number leads to is decided before the task starts, in [`route`] and by
//! admission: test numbers echo RTP or ring, flow numbers go to a bot, `pstn` numbers go out
//! through the carriers (or, coming from a carrier, to the trunk's destinations).

pub mod env;
mod hops;
mod pair;
pub(crate) mod record;
mod route;

pub use route::{admit, route, Admission, Admitted, Route};

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use voicegate_call::Call;
use voicegate_sip::message::Request;
use voicegate_sip::transport::Source;

use crate::core::{CallInput, CallTx, Core};
use env::NodeEnv;

pub async fn run(
    core: Arc<Core>,
    invite: Request,
    source: Source,
    branch: String,
    local_tag: String,
    // The call's own input channel: its sender goes to the routes and the other leg.
    (self_tx, mut rx): (CallTx, mpsc::Receiver<CallInput>),
    admitted: Admitted,
) {
    let now = Instant::now();
    let call_id = invite.call_id().to_string();
    let env = NodeEnv::new(core.clone(), self_tx);
    let mut call = Call::new(env, invite, source, &local_tag, admitted, now);
    call.start(now).await;
    call.settle().await;
    while !call.finished() {
        let deadline = call.next_deadline();
        tokio::select! {
            input = rx.recv() => match input {
                Some(CallInput::Request(request, source)) => call.on_request(request, source, Instant::now()),
                Some(CallInput::Response(response, _)) => call.on_response(&response, Instant::now()),
                None => break,
            },
            input = call.env_mut().next_event() => call.on_media_input(input, Instant::now()),
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => call.on_timeout(Instant::now()),
        }
        call.settle().await;
    }
    call.close().await;
    core.unregister(&call_id, &branch, &local_tag);
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400)
}
