//! Integration tests of the coordinator.
//!
//! * [`harness`]: starts, kills and restarts nodes of one carrier, and injects
//!   faults and raw frames.
//! * [`suite`]: the conformance suite, written once against the `Coordinator`
//!   trait; [`conformance_suite!`] instantiates it for one carrier so that every
//!   test is named `conformance::<carrier>::<test>`.
//! * [`watch`]: what an application sees of a sender's broadcasts.

pub mod brokers;
pub mod harness;
pub mod raft;
pub mod suite;
pub mod wait;
pub mod watch;

/// Instantiates the whole conformance suite for one carrier.
///
/// `$make` is an async function returning a fresh [`harness::Harness`].
#[macro_export]
macro_rules! conformance_suite {
    ($carrier:ident, $make:path) => {
        mod $carrier {
            $crate::conformance_suite!(@tests $make;
                broadcast_in_order,
                a_burst_shares_frames_and_arrives_whole,
                own_messages_only_when_asked,
                join_is_seen_by_all_within_one_interval,
                killed_node_is_suspected_then_dead_in_time,
                graceful_leave_is_seen_at_once,
                restarted_node_is_never_listed_twice,
                node_that_left_can_come_back,
                point_to_point_is_fifo_per_pair,
                posted_messages_arrive_once_in_the_order_made,
                concurrent_senders_to_one_node_keep_each_order,
                request_gets_its_reply,
                request_times_out_with_a_typed_error,
                unknown_and_dead_nodes_fail_fast,
                gap_is_reported_under_loss,
                tampered_and_unauthenticated_frames_are_dropped_and_counted,
                replayed_frames_are_not_delivered_twice,
                oversized_messages_are_refused,
            );
        }
    };
    (@tests $make:path; $($test:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::suite::$test($make().await).await;
            }
        )*
    };
}
