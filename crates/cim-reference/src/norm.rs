//! LayerNorm over the last axis (S3: biased variance, eps 1e-6 in the model), forward and
//! backward, row by row. The mean and the variance are two separate passes (the textbook
//! definition, no running-sum shortcut).

/// Implements [`cim_spec::backend::Norm::layernorm_forward`]: for each row of `cols` values,
/// `mean = sum x / cols`, `rstd = 1 / sqrt(sum (x - mean)^2 / cols + eps)`,
/// `out = (x - mean) rstd gamma + beta`. Writes `out` `[rows, cols]`, `mean` and `rstd`
/// `[rows]`.
pub fn layernorm_forward(
    out: &mut [f64],
    mean: &mut [f64],
    rstd: &mut [f64],
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    rows: usize,
    cols: usize,
    eps: f64,
) {
    assert!(cols > 0, "layernorm_forward: cols");
    assert_eq!(x.len(), rows * cols, "layernorm_forward: x");
    assert_eq!(out.len(), rows * cols, "layernorm_forward: out");
    assert_eq!(mean.len(), rows, "layernorm_forward: mean");
    assert_eq!(rstd.len(), rows, "layernorm_forward: rstd");
    assert_eq!(gamma.len(), cols, "layernorm_forward: gamma");
    assert_eq!(beta.len(), cols, "layernorm_forward: beta");
    let n = cols as f64;
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mut sum = 0.0;
        for c in 0..cols {
            sum += row[c];
        }
        let mu = sum / n;
        let mut squares = 0.0;
        for c in 0..cols {
            squares += (row[c] - mu) * (row[c] - mu);
        }
        let inv_std = 1.0 / (squares / n + eps).sqrt();
        for c in 0..cols {
            out[r * cols + c] = (row[c] - mu) * inv_std * gamma[c] + beta[c];
        }
        mean[r] = mu;
        rstd[r] = inv_std;
    }
}

/// [`cim_spec::backend::Norm::layernorm_backward`], from the saved `mean` and `rstd`:
/// with `xhat = (x - mean) rstd` and `g = dout * gamma`, per row
/// `dx += rstd (g - mean_c(g) - xhat mean_c(g xhat))`, and over all rows
/// `dgamma += sum_rows dout xhat`, `dbeta += sum_rows dout`. All three accumulate.
pub fn layernorm_backward(
    dx: &mut [f64],
    dgamma: &mut [f64],
    dbeta: &mut [f64],
    dout: &[f64],
    x: &[f64],
    gamma: &[f64],
    mean: &[f64],
    rstd: &[f64],
    rows: usize,
    cols: usize,
) {
    assert!(cols > 0, "layernorm_backward: cols");
    assert_eq!(dx.len(), rows * cols, "layernorm_backward: dx");
    assert_eq!(dout.len(), rows * cols, "layernorm_backward: dout");
    assert_eq!(x.len(), rows * cols, "layernorm_backward: x");
    assert_eq!(dgamma.len(), cols, "layernorm_backward: dgamma");
    assert_eq!(dbeta.len(), cols, "layernorm_backward: dbeta");
    assert_eq!(gamma.len(), cols, "layernorm_backward: gamma");
    assert_eq!(mean.len(), rows, "layernorm_backward: mean");
    assert_eq!(rstd.len(), rows, "layernorm_backward: rstd");
    let n = cols as f64;
    let xhat = |r: usize, c: usize| (x[r * cols + c] - mean[r]) * rstd[r];

    // Input gradient, row by row.
    for r in 0..rows {
        let mut sum_g = 0.0;
        let mut sum_g_xhat = 0.0;
        for c in 0..cols {
            let g = dout[r * cols + c] * gamma[c];
            sum_g += g;
            sum_g_xhat += g * xhat(r, c);
        }
        let mean_g = sum_g / n;
        let mean_g_xhat = sum_g_xhat / n;
        for c in 0..cols {
            let g = dout[r * cols + c] * gamma[c];
            dx[r * cols + c] += rstd[r] * (g - mean_g - xhat(r, c) * mean_g_xhat);
        }
    }

    // Parameter gradients, column by column, summed over rows in order.
    for c in 0..cols {
        let mut sum_dgamma = 0.0;
        let mut sum_dbeta = 0.0;
        for r in 0..rows {
            sum_dgamma += dout[r * cols + c] * xhat(r, c);
            sum_dbeta += dout[r * cols + c];
        }
        dgamma[c] += sum_dgamma;
        dbeta[c] += sum_dbeta;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{fd_check, rand_vec, rng, weighted_sum};

    #[test]
    fn layernorm_of_one_two_three_by_hand() {
        // mean 2, biased variance 2/3; with eps = 0, xhat = [-sqrt(3/2), 0, sqrt(3/2)].
        let s = 1.224_744_871_391_589;
        let (mut out, mut mean, mut rstd) = ([0.0; 3], [0.0], [0.0]);
        let gamma = [1.0, 2.0, 0.5];
        let beta = [0.0, 1.0, -1.0];
        layernorm_forward(
            &mut out,
            &mut mean,
            &mut rstd,
            &[1.0, 2.0, 3.0],
            &gamma,
            &beta,
            1,
            3,
            0.0,
        );
        assert_eq!(mean, [2.0]);
        assert!((rstd[0] - s).abs() < 1e-15);
        let expected = [-s, 1.0, -1.0 + 0.5 * s];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-15, "{o} vs {e}");
        }
        // eps enters under the square root: rstd = 1 / sqrt(2/3 + 1e-6).
        layernorm_forward(
            &mut out,
            &mut mean,
            &mut rstd,
            &[1.0, 2.0, 3.0],
            &gamma,
            &beta,
            1,
            3,
            1e-6,
        );
        assert!((rstd[0] - 1.0 / (2.0f64 / 3.0 + 1e-6).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let (rows, cols) = (3, 5);
        let eps = 1e-6;
        let mut r = rng(200);
        let x: Vec<f64> = rand_vec(&mut r, rows * cols)
            .iter()
            .map(|v| 2.0 * v + 0.3)
            .collect();
        let gamma: Vec<f64> = rand_vec(&mut r, cols).iter().map(|v| 1.0 + v).collect();
        let beta = rand_vec(&mut r, cols);
        let w = rand_vec(&mut r, rows * cols);
        // L(x, gamma, beta) = sum w . LN(x), with all three packed in one vector.
        let f = |p: &[f64]| {
            let (x, rest) = p.split_at(rows * cols);
            let (gamma, beta) = rest.split_at(cols);
            let mut out = vec![0.0; rows * cols];
            let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
            layernorm_forward(
                &mut out, &mut mean, &mut rstd, x, gamma, beta, rows, cols, eps,
            );
            weighted_sum(&w, &out)
        };
        let mut out = vec![0.0; rows * cols];
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        layernorm_forward(
            &mut out, &mut mean, &mut rstd, &x, &gamma, &beta, rows, cols, eps,
        );
        let (mut dx, mut dgamma, mut dbeta) =
            (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
        layernorm_backward(
            &mut dx,
            &mut dgamma,
            &mut dbeta,
            &w,
            &x,
            &gamma,
            &mean,
            &rstd,
            rows,
            cols,
        );
        let params: Vec<f64> = x.iter().chain(&gamma).chain(&beta).copied().collect();
        let grad: Vec<f64> = dx.iter().chain(&dgamma).chain(&dbeta).copied().collect();
        fd_check(f, &params, &grad);
    }

    #[test]
    fn nan_stays_in_its_row_and_column() {
        let (rows, cols) = (3, 4);
        let mut r = rng(201);
        let mut x = rand_vec(&mut r, rows * cols);
        let mut gamma = rand_vec(&mut r, cols);
        let beta = rand_vec(&mut r, cols);
        let (mut out, mut mean, mut rstd) =
            (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
        x[cols + 2] = f64::NAN;
        layernorm_forward(
            &mut out, &mut mean, &mut rstd, &x, &gamma, &beta, rows, cols, 1e-6,
        );
        for row in 0..rows {
            assert_eq!(mean[row].is_nan(), row == 1);
            assert_eq!(rstd[row].is_nan(), row == 1);
            for c in 0..cols {
                assert_eq!(out[row * cols + c].is_nan(), row == 1);
            }
        }
        x[cols + 2] = 0.25;
        gamma[3] = f64::NAN;
        layernorm_forward(
            &mut out, &mut mean, &mut rstd, &x, &gamma, &beta, rows, cols, 1e-6,
        );
        for i in 0..rows * cols {
            assert_eq!(out[i].is_nan(), i % cols == 3);
        }
        // A NaN output gradient reaches its row of dx and its column of dgamma and dbeta.
        gamma[3] = 1.0;
        let mut dout = rand_vec(&mut r, rows * cols);
        dout[2 * cols + 1] = f64::NAN;
        let (mut dx, mut dgamma, mut dbeta) =
            (vec![0.0; rows * cols], vec![0.0; cols], vec![0.0; cols]);
        layernorm_backward(
            &mut dx,
            &mut dgamma,
            &mut dbeta,
            &dout,
            &x,
            &gamma,
            &mean,
            &rstd,
            rows,
            cols,
        );
        for i in 0..rows * cols {
            assert_eq!(dx[i].is_nan(), i / cols == 2);
        }
        for c in 0..cols {
            assert_eq!(dgamma[c].is_nan(), c == 1);
            assert_eq!(dbeta[c].is_nan(), c == 1);
        }
    }
}
