//! How a batch of sequences is cut into forwards: family-neutral helpers that each model family
//! uses inside its own [`super::Model::hidden_states`].
//!
//! Why two plans: a family that pads (most GPU paths) wants sequences of similar length together
//! so little compute goes to padding; a family that runs sequences packed back to back (the CPU
//! f32 BERT path) pays nothing for mixed lengths and only needs the token budget respected.

use std::ops::Range;

/// Sequences (by index into the batch) that run in one padded forward, padded to `padded_len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub members: Vec<usize>,
    pub padded_len: usize,
}

/// Plans padded forwards for sequences of the given lengths. Every index appears exactly once; a
/// forward's padded size (`members × padded_len`) stays within `max_tokens` unless a single
/// sequence alone exceeds it; members are at least 3/4 of the padded length. When every member
/// of a forward has the same length (the common case under load) it needs no mask at all.
pub fn padded_forwards(lengths: &[usize], max_tokens: usize) -> Vec<Forward> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|a, b| lengths[*b].cmp(&lengths[*a]).then(a.cmp(b)));
    let mut forwards: Vec<Forward> = Vec::new();
    for index in order {
        let len = lengths[index];
        let fits = forwards.last().is_some_and(|f| {
            (f.members.len() + 1) * f.padded_len <= max_tokens && len * 4 >= f.padded_len * 3
        });
        match forwards.last_mut() {
            Some(current) if fits => current.members.push(index),
            _ => forwards.push(Forward {
                members: vec![index],
                padded_len: len,
            }),
        }
    }
    forwards
}

/// Consecutive runs of sequences (input order) whose total length stays within `max_tokens`,
/// for packed forwards; a sequence longer than the budget runs alone.
pub fn packed_forwards(lengths: &[usize], max_tokens: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (index, len) in lengths.iter().enumerate() {
        if index > start && tokens + len > max_tokens {
            groups.push(start..index);
            (start, tokens) = (index, 0);
        }
        tokens += len;
    }
    if start < lengths.len() {
        groups.push(start..lengths.len());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_plan_covers_every_sequence_once_within_budget() {
        let lengths = [5, 250, 7, 6, 240, 5, 100, 9, 256, 5];
        let plan = padded_forwards(&lengths, 512);
        let mut seen: Vec<usize> = plan.iter().flat_map(|f| f.members.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for forward in &plan {
            assert!(
                forward.members.len() == 1 || forward.members.len() * forward.padded_len <= 512
            );
            for m in &forward.members {
                assert!(lengths[*m] <= forward.padded_len);
                assert!(lengths[*m] * 4 >= forward.padded_len * 3);
            }
        }
    }

    #[test]
    fn packed_plan_keeps_order_and_budget() {
        let lengths = [5, 250, 7, 6, 240, 5, 100, 9, 600, 5];
        let plan = packed_forwards(&lengths, 512);
        let covered: Vec<usize> = plan.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(covered, (0..lengths.len()).collect::<Vec<_>>());
        for group in &plan {
            let tokens: usize = lengths[group.clone()].iter().sum();
            assert!(
                group.len() == 1 || tokens <= 512,
                "{group:?} has {tokens} tokens"
            );
        }
        assert_eq!(packed_forwards(&[], 512), Vec::<Range<usize>>::new());
    }

    #[test]
    fn equal_lengths_share_one_forward() {
        let plan = padded_forwards(&[16; 32], 4096);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].padded_len, 16);
    }
}
