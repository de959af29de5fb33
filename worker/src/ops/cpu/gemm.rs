//! A bounds-checked, safe front to the `gemm` crate's `f32` matrix product over strided views.

/// A read-only matrix view over a slice: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix at the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst (m × n, row-major) = [dst +] a (m × k) · b (k × n)`, on the calling thread or, with
/// `parallel`, on the rayon pool.
pub fn gemm(dst: &mut [f32], accumulate: bool, a: Mat, b: Mat, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions");
    assert!(dst.len() >= m * n, "gemm: destination too small");
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let parallelism = if parallel {
        gemm_crate::Parallelism::Rayon(0)
    } else {
        gemm_crate::Parallelism::None
    };
    // SAFETY: every index the product touches lies inside the slices (checked above: the last
    // element of each view is in bounds, and `dst` holds m × n row-major values); `dst` is a
    // unique borrow, so it aliases neither input.
    unsafe {
        gemm_crate::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat, b: Mat) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                out[i * b.cols + j] = (0..a.cols)
                    .map(|p| a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs])
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_products_match_the_definition() {
        let a: Vec<f32> = (0..35).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..35).map(|i| (i as f32 * 0.11).cos()).collect();
        let (am, bm) = (Mat::rows(&a, 5, 7), Mat::rows(&b, 7, 5));
        for (x, y) in [(am, bm), (bm.t(), am.t()), (am, am.t()), (bm.t(), bm)] {
            let want = naive(x, y);
            for parallel in [false, true] {
                let mut got = vec![1.0; x.rows * y.cols];
                gemm(&mut got, false, x, y, parallel);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "{g} vs {w}");
                }
                gemm(&mut got, true, x, y, parallel);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - 2.0 * w).abs() < 1e-5, "{g} vs 2 × {w}");
                }
            }
        }
    }
}
