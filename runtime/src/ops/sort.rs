//! libstdc++'s `std::sort` (introsort), reproduced step for step.
//!
//! torch's unstable CPU sort is `std::sort` on (value, index) pairs compared by value only, so
//! the order it leaves equal values in is this algorithm's. torchvision's batched NMS ends with
//! such a sort when it has more than 1,000 boxes; matching it "to the index" means doing the
//! same swaps.

const THRESHOLD: usize = 16;

/// Sorts `v` so that no element is `less` than one before it, moving elements exactly as
/// GCC's `std::sort(first, last, less)` does.
pub(crate) fn std_sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    if v.len() > 1 {
        let depth = 2 * (usize::BITS - 1 - v.len().leading_zeros()) as usize;
        introsort_loop(v, depth, less);
        final_insertion_sort(v, less);
    }
}

fn introsort_loop<T: Copy>(mut v: &mut [T], mut depth: usize, less: &impl Fn(&T, &T) -> bool) {
    while v.len() > THRESHOLD {
        if depth == 0 {
            heap_sort(v, less);
            return;
        }
        depth -= 1;
        let cut = partition_pivot(v, less);
        let (head, tail) = v.split_at_mut(cut);
        introsort_loop(tail, depth, less);
        v = head;
    }
}

fn partition_pivot<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) -> usize {
    let n = v.len();
    let mid = n / 2;
    move_median_to_first(v, 1, mid, n - 1, less);
    // Unguarded partition of v[1..] around the pivot now at v[0].
    let (mut first, mut last) = (1, n);
    loop {
        while less(&v[first], &v[0]) {
            first += 1;
        }
        last -= 1;
        while less(&v[0], &v[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        v.swap(first, last);
        first += 1;
    }
}

fn move_median_to_first<T: Copy>(v: &mut [T], a: usize, b: usize, c: usize, less: &impl Fn(&T, &T) -> bool) {
    let pick = if less(&v[a], &v[b]) {
        if less(&v[b], &v[c]) {
            b
        } else if less(&v[a], &v[c]) {
            c
        } else {
            a
        }
    } else if less(&v[a], &v[c]) {
        a
    } else if less(&v[b], &v[c]) {
        c
    } else {
        b
    };
    v.swap(0, pick);
}

fn final_insertion_sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    if v.len() > THRESHOLD {
        insertion_sort(&mut v[..THRESHOLD], less);
        for i in THRESHOLD..v.len() {
            unguarded_linear_insert(v, i, less);
        }
    } else {
        insertion_sort(v, less);
    }
}

fn insertion_sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    for i in 1..v.len() {
        if less(&v[i], &v[0]) {
            let val = v[i];
            v.copy_within(0..i, 1);
            v[0] = val;
        } else {
            unguarded_linear_insert(v, i, less);
        }
    }
}

fn unguarded_linear_insert<T: Copy>(v: &mut [T], mut last: usize, less: &impl Fn(&T, &T) -> bool) {
    let val = v[last];
    while less(&val, &v[last - 1]) {
        v[last] = v[last - 1];
        last -= 1;
    }
    v[last] = val;
}

fn heap_sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let len = v.len();
    if len >= 2 {
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[parent];
            adjust_heap(v, parent, len, value, less);
            if parent == 0 {
                break;
            }
            parent -= 1;
        }
    }
    let mut last = len;
    while last > 1 {
        last -= 1;
        let value = v[last];
        v[last] = v[0];
        adjust_heap(&mut v[..last], 0, last, value, less);
    }
}

fn adjust_heap<T: Copy>(v: &mut [T], mut hole: usize, len: usize, value: T, less: &impl Fn(&T, &T) -> bool) {
    let top = hole;
    let mut child = hole;
    while child < (len - 1) / 2 {
        child = 2 * (child + 1);
        if less(&v[child], &v[child - 1]) {
            child -= 1;
        }
        v[hole] = v[child];
        hole = child;
    }
    if len & 1 == 0 && child == (len - 2) / 2 {
        child = 2 * (child + 1);
        v[hole] = v[child - 1];
        hole = child - 1;
    }
    // push_heap
    let mut parent = hole.wrapping_sub(1) / 2;
    while hole > top && less(&v[parent], &value) {
        v[hole] = v[parent];
        hole = parent;
        parent = (hole.wrapping_sub(1)) / 2;
    }
    v[hole] = value;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(values: &[i32], sort: impl Fn(&mut [(i32, usize)], &dyn Fn(&(i32, usize), &(i32, usize)) -> bool)) -> Vec<usize> {
        let mut v: Vec<(i32, usize)> = values.iter().copied().zip(0..).collect();
        sort(&mut v, &|a, b| a.0 > b.0);
        v.into_iter().map(|p| p.1).collect()
    }

    /// `torch.sort(descending=True)` of 100 values in 0..5 (torch 2.15, CPU): indices.
    #[test]
    fn matches_torch_unstable_sort() {
        let values = [1, 4, 1, 4, 4, 1, 4, 4, 4, 0, 1, 2, 3, 0, 0, 0, 2, 4, 1, 3, 3, 3, 1, 4, 1, 2, 3, 0, 2, 1, 0, 4, 3, 1, 1, 0, 3, 1, 1, 2, 4, 1, 3, 4, 0, 0, 3, 2, 3, 2, 2, 0, 0, 0, 3, 1, 4, 1, 1, 0, 2, 4, 4, 3, 4, 3, 4, 3, 4, 3, 0, 3, 2, 3, 0, 1, 1, 0, 2, 2, 0, 1, 1, 0, 4, 0, 3, 1, 2, 3, 0, 4, 4, 3, 4, 4, 4, 0, 2, 4];
        let torch = [66, 23, 31, 40, 43, 56, 61, 62, 64, 1, 68, 84, 91, 92, 94, 95, 96, 99, 6, 8, 17, 7, 4, 3, 73, 89, 86, 46, 48, 54, 42, 71, 69, 12, 63, 65, 67, 19, 20, 21, 93, 32, 26, 36, 78, 11, 98, 60, 25, 72, 28, 79, 50, 49, 16, 47, 39, 88, 76, 75, 2, 81, 82, 0, 5, 18, 87, 10, 22, 24, 29, 33, 34, 37, 38, 41, 58, 57, 55, 74, 9, 59, 97, 27, 70, 30, 35, 90, 13, 53, 15, 85, 14, 83, 44, 45, 80, 51, 52, 77];
        assert_eq!(order(&values, |v, less| std_sort(v, &less)), torch);
    }

    /// The heap-sort fallback, against GCC's `std::make_heap` + `std::sort_heap` (descending).
    #[test]
    fn heap_sort_matches_libstdcxx() {
        let values = [0, 2, 2, 0, 5, 1, 0, 2, 5, 1, 5, 3, 2, 4, 1, 4, 1, 2, 0, 4, 2, 5, 3, 2, 1, 2, 1, 5, 4, 4, 1, 4, 4, 4, 0, 3, 3, 2, 0, 0, 5, 4, 2, 3, 0];
        let gcc = [4, 40, 27, 21, 8, 10, 33, 15, 41, 31, 13, 32, 28, 19, 29, 43, 22, 35, 11, 36, 7, 17, 37, 1, 20, 42, 23, 25, 12, 2, 16, 9, 24, 5, 26, 14, 30, 34, 3, 18, 38, 39, 44, 0, 6];
        assert_eq!(order(&values, |v, less| heap_sort(v, &less)), gcc);
    }

    #[test]
    fn sorts() {
        let mut state = 99u64;
        for n in [0usize, 1, 2, 15, 16, 17, 100, 5000] {
            let mut v: Vec<u32> = (0..n)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 50) as u32
                })
                .collect();
            let mut expected = v.clone();
            expected.sort();
            std_sort(&mut v, &|a, b| a < b);
            assert_eq!(v, expected);
        }
    }
}
