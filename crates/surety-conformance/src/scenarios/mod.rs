//! The scenarios, one module each; every one is a function over a fixture.

mod s1_retried_batch;
mod s2_ack_after_handler;
mod s3_dead_letters;
mod s4_consumer_kill;
mod s5_no_gaps;
mod s6_outbox;
mod s7_bad_input;

use crate::{ScenarioFn, TransportFixture, Verdict};
use surety_core::BoxFuture;

macro_rules! scenario {
    ($name:literal, $module:ident) => {{
        fn run(f: &dyn TransportFixture) -> BoxFuture<'_, Verdict> {
            Box::pin($module::run(f))
        }
        ($name, run as ScenarioFn)
    }};
}

pub(crate) const ALL: [(&str, ScenarioFn); 7] = [
    scenario!("s1_retried_batch_stored_once", s1_retried_batch),
    scenario!("s2_ack_after_handler", s2_ack_after_handler),
    scenario!("s3_dead_letters", s3_dead_letters),
    scenario!("s4_consumer_killed_mid_handler", s4_consumer_kill),
    scenario!("s5_no_gaps_under_kills_and_restarts", s5_no_gaps),
    scenario!("s6_outbox_relay_exactly_once", s6_outbox),
    scenario!("s7_bad_input_refused", s7_bad_input),
];
