//! The harness's checkers can fail: each is shown a planted fault.

use super::harness::{check_agreement, id, inc, Counter, Outcome, Outcomes};
use crate::state_machine::{Decree, StateMachine};
use bytes::Bytes;
use paxos_core::Slot;

fn decree(slot: Slot) -> Decree {
    Decree {
        slot,
        proposer: id(1),
        time_us: 0,
    }
}

#[test]
#[should_panic(expected = "settled twice")]
fn a_second_outcome_for_one_request_is_caught() {
    let mut outcomes = Outcomes::default();
    outcomes.record(1, Outcome::Complete(Bytes::new()));
    outcomes.record(1, Outcome::Complete(Bytes::new()));
}

#[test]
fn diverging_histories_and_slots_out_of_order_are_caught() {
    let mut a = Counter::default();
    let mut b = Counter::default();
    a.execute(&decree(Slot(1)), &inc(1, 0));
    a.execute(&decree(Slot(2)), &inc(2, 0));
    b.execute(&decree(Slot(1)), &inc(1, 0));
    assert_eq!(check_agreement([(id(1), &a), (id(2), &b)]), Ok(()));
    b.execute(&decree(Slot(2)), &inc(3, 0));
    assert!(check_agreement([(id(1), &a), (id(2), &b)]).is_err());

    let mut c = a.clone();
    c.history.swap(0, 1);
    assert!(check_agreement([(id(3), &c)])
        .unwrap_err()
        .contains("executed slot 1 after slot 2"));
}

#[test]
#[should_panic(expected = "executed after slot")]
fn the_counter_refuses_a_decree_below_the_last_one() {
    let mut c = Counter::default();
    c.execute(&decree(Slot(5)), &inc(1, 0));
    c.execute(&decree(Slot(4)), &inc(1, 0));
}

#[test]
fn the_counter_round_trips_and_refuses_a_total_that_does_not_add_up() {
    let mut c = Counter::default();
    c.execute(&decree(Slot(1)), &inc(3, 5));
    c.execute(&decree(Slot(2)), &inc(4, 0));
    assert_eq!(
        c.execute(&decree(Slot(2)), b"short"),
        Bytes::from_static(b"bad request")
    );
    let mut back = Counter::default();
    back.restore(&mut &c.encode()[..]).unwrap();
    assert_eq!(back, c);
    let mut bad = c.clone();
    bad.total += 1;
    assert!(back.restore(&mut &bad.encode()[..]).is_err());
    assert_eq!(back, c, "a refused restore leaves the state alone");
}
