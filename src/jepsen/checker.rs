//! Linearizability of a register history: the Wing–Gong search with Lowe's memoization
//! (the algorithm behind Knossos and Porcupine), for one key at a time.
//!
//! A history is a set of operations, each with the instant it was invoked and the instant
//! its answer arrived. It is linearizable if the operations can be put in one order that
//! respects real time (an operation that returned before another was invoked comes first)
//! and in which every read returns the value of the write before it. Writes whose outcome
//! is unknown (a timeout, a lost connection) may have taken effect at any point after their
//! invocation, or never: they have no return and are never required.

use std::collections::HashSet;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// Set the register to a value (values are unique per history).
    Write(u32),
    /// Read the register; `None` when it was never written.
    Read(Option<u32>),
}

/// One operation on one register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Invocation time (any monotonic unit).
    pub invoke: u64,
    /// Return time; `None` when the outcome is unknown (only for writes).
    pub complete: Option<u64>,
    /// What it did.
    pub kind: OpKind,
}

/// The verdict on one register's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid order exists.
    Linearizable,
    /// No order exists; `op` is the index of the operation with the latest return that
    /// the search could never get past (where to start looking).
    NotLinearizable {
        /// Index into the history.
        op: usize,
    },
}

/// One entry of the time-ordered event list: an operation's call or its return.
#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
}

/// Checks one register's history, starting from the unwritten register.
///
/// Writes with unknown outcome whose value no read returned are dropped first: whether
/// they happened cannot matter to any read, and each one kept would double the search.
pub fn check_register(history: &[Op]) -> Verdict {
    let observed: HashSet<u32> = history
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Read(Some(v)) => Some(v),
            _ => None,
        })
        .collect();
    let kept: Vec<usize> = (0..history.len())
        .filter(|&i| {
            let op = &history[i];
            match op.kind {
                OpKind::Write(v) => op.complete.is_some() || observed.contains(&v),
                OpKind::Read(_) => op.complete.is_some(),
            }
        })
        .collect();

    // Events by time; at a tie a call sorts before a return, so the two operations count
    // as concurrent (the lenient reading of equal timestamps).
    let mut events: Vec<(u64, bool, Entry)> = Vec::with_capacity(kept.len() * 2);
    for (k, &i) in kept.iter().enumerate() {
        let op = &history[i];
        events.push((
            op.invoke,
            false,
            Entry {
                op: k,
                is_call: true,
            },
        ));
        if let Some(complete) = op.complete {
            events.push((
                complete,
                true,
                Entry {
                    op: k,
                    is_call: false,
                },
            ));
        }
    }
    events.sort_by_key(|(t, is_return, _)| (*t, *is_return));
    let entries: Vec<Entry> = events.into_iter().map(|(_, _, e)| e).collect();
    let n = entries.len();

    // A doubly linked list over `entries` (entry i links to i + 1), with a head sentinel at
    // index n that links to entry 0.
    let head = n;
    let mut next: Vec<usize> = (1..n).chain([NONE]).take(n).collect();
    next.push(if n == 0 { NONE } else { 0 });
    let mut prev: Vec<usize> = std::iter::once(head).chain(0..n).take(n).collect();
    prev.push(NONE);
    let mut call_of = vec![NONE; kept.len()];
    let mut return_of = vec![NONE; kept.len()];
    for (idx, e) in entries.iter().enumerate() {
        if e.is_call {
            call_of[e.op] = idx;
        } else {
            return_of[e.op] = idx;
        }
    }
    let mut returns_left = return_of.iter().filter(|&&r| r != NONE).count();

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, idx: usize| {
        let (p, q) = (prev[idx], next[idx]);
        next[p] = q;
        if q != NONE {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, idx: usize| {
        let (p, q) = (prev[idx], next[idx]);
        next[p] = idx;
        if q != NONE {
            prev[q] = idx;
        }
    };

    // The set of linearized operations, as a Zobrist hash (the XOR of a random 128-bit key
    // per operation): O(1) to update and to remember, where a bitset costs O(n) per step.
    // Two different sets share a hash with probability about 2^-128 per pair.
    let keys: Vec<u128> = {
        let mut x = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = move || {
            // splitmix64
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        (0..kept.len())
            .map(|_| (u128::from(next()) << 64) | u128::from(next()))
            .collect()
    };
    let mut linearized: u128 = 0;
    let mut seen: HashSet<(u128, Option<u32>)> = HashSet::new();
    // (op, register value before it)
    let mut stack: Vec<(usize, Option<u32>)> = Vec::new();
    let mut state: Option<u32> = None;
    // The latest (in time) return the search was ever blocked at: where to start looking
    // when no order exists.
    let mut latest_block = 0usize;
    let mut cursor = next[head];

    while returns_left > 0 {
        // While a return is pending the list holds one after the cursor (a call's return
        // follows it), so `cursor` cannot run off the end; if it did, treat it as a block.
        if cursor != NONE && entries[cursor].is_call {
            let op = entries[cursor].op;
            let (ok, new_state) = match history[kept[op]].kind {
                OpKind::Write(v) => (true, Some(v)),
                OpKind::Read(v) => (v == state, state),
            };
            let bits = linearized ^ keys[op];
            if ok && seen.insert((bits, new_state)) {
                stack.push((op, state));
                state = new_state;
                linearized = bits;
                unlink(&mut next, &mut prev, call_of[op]);
                if return_of[op] != NONE {
                    unlink(&mut next, &mut prev, return_of[op]);
                    returns_left -= 1;
                }
                cursor = next[head];
            } else {
                cursor = next[cursor];
            }
            continue;
        }
        // A return whose operation is not linearized yet: undo the last choice and try the
        // candidates after it.
        if cursor != NONE {
            latest_block = latest_block.max(cursor);
        }
        let Some((op, before)) = stack.pop() else {
            return Verdict::NotLinearizable {
                op: kept[entries[latest_block].op],
            };
        };
        state = before;
        linearized ^= keys[op];
        if return_of[op] != NONE {
            relink(&mut next, &mut prev, return_of[op]);
            returns_left += 1;
        }
        relink(&mut next, &mut prev, call_of[op]);
        cursor = next[call_of[op]];
    }
    Verdict::Linearizable
}

/// The end of the event list.
const NONE: usize = usize::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    fn w(invoke: u64, complete: u64, v: u32) -> Op {
        Op {
            invoke,
            complete: Some(complete),
            kind: OpKind::Write(v),
        }
    }
    fn w_unknown(invoke: u64, v: u32) -> Op {
        Op {
            invoke,
            complete: None,
            kind: OpKind::Write(v),
        }
    }
    fn r(invoke: u64, complete: u64, v: Option<u32>) -> Op {
        Op {
            invoke,
            complete: Some(complete),
            kind: OpKind::Read(v),
        }
    }

    #[test]
    fn an_empty_history_is_linearizable() {
        assert_eq!(check_register(&[]), Verdict::Linearizable);
    }

    #[test]
    fn sequential_reads_of_the_last_write_are_linearizable() {
        let h = [
            r(0, 1, None),
            w(2, 3, 1),
            r(4, 5, Some(1)),
            w(6, 7, 2),
            r(8, 9, Some(2)),
        ];
        assert_eq!(check_register(&h), Verdict::Linearizable);
    }

    #[test]
    fn a_read_that_misses_a_write_acknowledged_before_it_began_is_caught() {
        let h = [w(0, 1, 1), w(2, 3, 2), r(4, 5, Some(1))];
        assert_eq!(check_register(&h), Verdict::NotLinearizable { op: 2 });
    }

    #[test]
    fn a_read_of_the_unwritten_register_after_an_acknowledged_write_is_caught() {
        let h = [w(0, 1, 1), r(2, 3, None)];
        assert!(matches!(
            check_register(&h),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_either_value() {
        for seen in [Some(1), Some(2)] {
            let h = [w(0, 1, 1), w(2, 10, 2), r(3, 4, seen)];
            assert_eq!(check_register(&h), Verdict::Linearizable, "{seen:?}");
        }
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // Both reads overlap the write, but the second starts after the first returned the
        // new value, so it cannot return the old one.
        let h = [w(0, 1, 1), w(2, 20, 2), r(3, 4, Some(2)), r(5, 6, Some(1))];
        assert!(matches!(
            check_register(&h),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_write_with_unknown_outcome_may_take_effect_late_or_never() {
        // Observed long after its invocation: it took effect then.
        let late = [w_unknown(0, 7), r(5, 6, None), r(10, 11, Some(7))];
        assert_eq!(check_register(&late), Verdict::Linearizable);
        // Never observed: it never took effect.
        let never = [w(0, 1, 1), w_unknown(2, 7), r(5, 6, Some(1))];
        assert_eq!(check_register(&never), Verdict::Linearizable);
    }

    #[test]
    fn a_write_with_unknown_outcome_cannot_take_effect_before_it_was_invoked() {
        let h = [r(0, 1, Some(7)), w_unknown(5, 7)];
        assert!(matches!(
            check_register(&h),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_value_once_overwritten_cannot_come_back() {
        let h = [w(0, 1, 1), w(2, 3, 2), r(4, 5, Some(2)), r(6, 7, Some(1))];
        assert!(matches!(
            check_register(&h),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_long_heavily_overlapping_history_is_judged_both_ways() {
        // 8 clients, 400 operations, every read returning the latest completed write: a
        // history that is linearizable by construction, with heavy overlap.
        let mut h = Vec::new();
        let mut last = None;
        for i in 0..20_000u64 {
            let t = i * 10;
            if i % 2 == 0 {
                h.push(w(t, t + 75, i as u32));
                last = Some(i as u32);
            } else {
                // Overlaps the writes of the last 80 ticks; returns the value of a write
                // that was invoked before it and not yet overwritten by a completed one.
                h.push(r(t, t + 5, last));
            }
        }
        assert_eq!(check_register(&h), Verdict::Linearizable);
        // A stale read after everything settled: the search must exhaust and say so.
        h.push(r(10_000, 10_001, Some(0)));
        assert_eq!(
            check_register(&h),
            Verdict::NotLinearizable { op: h.len() - 1 }
        );
    }
}
