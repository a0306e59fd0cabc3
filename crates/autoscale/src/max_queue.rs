//! A monotonic queue: the maximum of the values pushed in a sliding time
//! window, in amortised O(1) per push.

use std::collections::VecDeque;

/// The recommendations of the last `span` seconds, keeping only those that
/// can still be the maximum (a value is dropped once a later value at least
/// as large arrives).
#[derive(Debug, Clone, Default)]
pub struct MaxQueue {
    /// (second, value), seconds increasing, values strictly decreasing.
    items: VecDeque<(u64, u32)>,
}

impl MaxQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` at `second` and forgets entries older than `second - span`.
    pub fn push(&mut self, second: u64, value: u32, span: u64) {
        while self.items.back().is_some_and(|&(_, v)| v <= value) {
            self.items.pop_back();
        }
        self.items.push_back((second, value));
        self.expire(second, span);
    }

    /// Forgets entries older than `now - span`.
    pub fn expire(&mut self, now: u64, span: u64) {
        while self.items.front().is_some_and(|&(s, _)| s + span < now) {
            self.items.pop_front();
        }
    }

    /// The largest value still in the window.
    pub fn max(&self) -> Option<u32> {
        self.items.front().map(|&(_, v)| v)
    }

    /// Entries kept (at most the window's length).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_the_maximum_for_span_seconds() {
        let mut q = MaxQueue::new();
        q.push(0, 5, 3);
        q.push(1, 2, 3);
        assert_eq!(q.max(), Some(5));
        q.push(3, 1, 3);
        assert_eq!(q.max(), Some(5));
        q.push(4, 1, 3);
        assert_eq!(q.max(), Some(2));
        q.push(5, 1, 3);
        assert_eq!(q.max(), Some(1));
    }

    proptest! {
        #[test]
        fn matches_a_rescan(values in proptest::collection::vec(0u32..20, 1..200), span in 0u64..30) {
            let mut q = MaxQueue::new();
            for (t, &v) in values.iter().enumerate() {
                let t = t as u64;
                q.push(t, v, span);
                let lo = usize::try_from(t.saturating_sub(span)).unwrap();
                let expected = values[lo..=usize::try_from(t).unwrap()].iter().max().copied();
                prop_assert_eq!(q.max(), expected);
                prop_assert!(q.len() as u64 <= span + 1);
            }
        }
    }
}
