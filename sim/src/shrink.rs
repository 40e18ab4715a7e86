//! Shrinking a failing sequence of operations (the differential tests' sequences) to the
//! operations that still show the failure.

/// Removes items one at a time, from the last to the first, keeping each removal after which
/// `still_fails` holds; repeats while a pass removed something, at most three passes. What is
/// left is (close to) the smallest sequence that still fails.
pub fn by_removal<T: Clone>(
    mut items: Vec<T>,
    mut still_fails: impl FnMut(&[T]) -> bool,
) -> Vec<T> {
    for _pass in 0..3 {
        let before = items.len();
        let mut index = items.len();
        while index > 0 {
            index -= 1;
            let mut candidate = items.clone();
            candidate.remove(index);
            if still_fails(&candidate) {
                items = candidate;
            }
        }
        if items.len() == before {
            break;
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_the_failure_needs() {
        // Fails while 3 comes somewhere after 7.
        let fails = |items: &[u32]| {
            items
                .iter()
                .position(|&i| i == 7)
                .is_some_and(|seven| items[seven..].contains(&3))
        };
        assert_eq!(by_removal(vec![1, 7, 2, 9, 3, 4], fails), vec![7, 3]);
        assert_eq!(by_removal(vec![5, 6], |_| false), vec![5, 6]);
    }
}
