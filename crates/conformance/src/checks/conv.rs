//! Checks of the decoder's Figure 4 options (S4): the depthwise cross-correlation of the
//! "conv" correlation and the transposed convolution of the deconvolution predictor, both
//! directions. Inputs are token maps whose class token (token 0) is random like the rest,
//! so a backend that reads it is caught; the gradients the contract writes start as NaN
//! (their class rows must come back as zeros), the transposed convolution's weight and
//! bias gradients accumulate and start nonzero, at about the magnitude of the sum they
//! receive.
//!
//! Conditioning (see `harness`): when an output has fewer than `FEW` elements, every input
//! is made non-negative, so no output element is a cancelling sum.

use cim_spec::backend::{Backend, ConvTransposeArgs, Role, XcorrArgs};
use cim_spec::ops;
use cim_spec::tolerance::Op;

use crate::cases::{ConvTransposeCase, XcorrCase};
use crate::harness::{FEW, Gen, Program, Setup, Slot, make_non_negative, whole, whole_mut};
use crate::mismatch::Mismatch;

/// Runs one convolution op; slot orders are those of the contract's arguments:
/// correlation forward `[out, x, t]`, backward `[dx, dt, dout, x, t]`; transposed
/// convolution forward `[out, x, weight, bias]`, backward
/// `[dx, dweight, dbias, dout, x, weight]`.
pub(crate) enum RunConv {
    XcorrForward(XcorrArgs),
    XcorrBackward(XcorrArgs),
    DeconvForward(ConvTransposeArgs),
    DeconvBackward(ConvTransposeArgs),
}

impl Program for RunConv {
    fn run<B: Backend>(&self, be: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error> {
        match self {
            RunConv::XcorrForward(args) => {
                let [out, x, t] = bufs else {
                    unreachable!("3 slots")
                };
                let out = whole_mut(be, out);
                ops::depthwise_xcorr_forward(be, out, whole(be, x), whole(be, t), args)
            }
            RunConv::XcorrBackward(args) => {
                let [dx, dt, dout, x, t] = bufs else {
                    unreachable!("5 slots")
                };
                let (dx, dt) = (whole_mut(be, dx), whole_mut(be, dt));
                let (dout, x, t) = (whole(be, dout), whole(be, x), whole(be, t));
                ops::depthwise_xcorr_backward(be, dx, dt, dout, x, t, args)
            }
            RunConv::DeconvForward(args) => {
                let [out, x, weight, bias] = bufs else {
                    unreachable!("4 slots")
                };
                let out = whole_mut(be, out);
                let (x, weight, bias) = (whole(be, x), whole(be, weight), whole(be, bias));
                ops::conv_transpose_forward(be, out, x, weight, bias, args)
            }
            RunConv::DeconvBackward(args) => {
                let [dx, dweight, dbias, dout, x, weight] = bufs else {
                    unreachable!("6 slots")
                };
                let (dx, dweight, dbias) = (
                    whole_mut(be, dx),
                    whole_mut(be, dweight),
                    whole_mut(be, dbias),
                );
                let (dout, x, weight) = (whole(be, dout), whole(be, x), whole(be, weight));
                ops::conv_transpose_backward(be, dx, dweight, dbias, dout, x, weight, args)
            }
        }
    }
}

/// Makes every listed input non-negative when the smallest output is below `FEW`.
fn condition(smallest_output: usize, inputs: &mut [&mut Vec<f32>]) {
    if smallest_output < FEW {
        for v in inputs {
            let len = v.len();
            make_non_negative(v, 0..len);
        }
    }
}

/// Elements of the maps and of the kernels of a correlation case.
fn xcorr_sizes(a: &XcorrArgs) -> (usize, usize) {
    (
        a.batch * (1 + a.height * a.width) * a.channels,
        a.batch * (1 + a.kernel_h * a.kernel_w) * a.channels,
    )
}

pub(crate) fn xcorr_forward_setup(case: &XcorrCase) -> (Setup, RunConv) {
    let a = case.args;
    let (maps, kernels) = xcorr_sizes(&a);
    let mut data = Gen::new(case.seed);
    let mut x = data.normal(maps, f64::from(case.x_scale));
    let mut t = data.normal(kernels, f64::from(case.t_scale));
    condition(maps, &mut [&mut x, &mut t]);
    let slots = vec![
        Slot::written("out", Role::Activation, maps),
        Slot::input("x", Role::Activation, x),
        Slot::input("t", Role::Activation, t),
    ];
    (
        Setup::new(Op::DepthwiseXcorrForward, case, slots),
        RunConv::XcorrForward(a),
    )
}

pub(crate) fn xcorr_backward_setup(case: &XcorrCase) -> (Setup, RunConv) {
    let a = case.args;
    let (maps, kernels) = xcorr_sizes(&a);
    let mut data = Gen::new(case.seed);
    let mut x = data.normal(maps, f64::from(case.x_scale));
    let mut t = data.normal(kernels, f64::from(case.t_scale));
    let mut dout = data.normal(maps, f64::from(case.grad_scale));
    condition(kernels.min(maps), &mut [&mut x, &mut t, &mut dout]);
    let slots = vec![
        Slot::written("dx", Role::Activation, maps),
        Slot::written("dt", Role::Activation, kernels),
        Slot::input("dout", Role::Activation, dout),
        Slot::input("x", Role::Activation, x),
        Slot::input("t", Role::Activation, t),
    ];
    (
        Setup::new(Op::DepthwiseXcorrBackward, case, slots),
        RunConv::XcorrBackward(a),
    )
}

/// [`cim_spec::backend::Conv::depthwise_xcorr_forward`]: `out` starts as NaN.
pub fn depthwise_xcorr_forward_case<B: Backend>(
    backend: &B,
    case: &XcorrCase,
) -> Result<(), Mismatch> {
    let (setup, program) = xcorr_forward_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Conv::depthwise_xcorr_backward`]: `dx` and `dt` start as NaN.
pub fn depthwise_xcorr_backward_case<B: Backend>(
    backend: &B,
    case: &XcorrCase,
) -> Result<(), Mismatch> {
    let (setup, program) = xcorr_backward_setup(case);
    setup.compare(backend, &program)
}

/// Elements of the input token maps, the weight and the output planes.
fn deconv_sizes(a: &ConvTransposeArgs) -> (usize, usize, usize) {
    (
        a.batch * (1 + a.height * a.width) * a.in_channels,
        a.in_channels * a.out_channels * a.kernel * a.kernel,
        a.batch * a.out_channels * a.out_height() * a.out_width(),
    )
}

pub(crate) fn deconv_forward_setup(case: &ConvTransposeCase) -> (Setup, RunConv) {
    let a = case.args;
    let (xn, wn, on) = deconv_sizes(&a);
    let mut data = Gen::new(case.seed);
    let mut x = data.normal(xn, f64::from(case.x_scale));
    let mut weight = data.normal(wn, f64::from(case.w_scale));
    let mut bias = data.normal(a.out_channels, f64::from(case.w_scale));
    condition(on, &mut [&mut x, &mut weight, &mut bias]);
    let slots = vec![
        Slot::written("out", Role::Activation, on),
        Slot::input("x", Role::Activation, x),
        Slot::input("weight", Role::Param, weight),
        Slot::input("bias", Role::Param, bias),
    ];
    (
        Setup::new(Op::ConvTransposeForward, case, slots),
        RunConv::DeconvForward(a),
    )
}

pub(crate) fn deconv_backward_setup(case: &ConvTransposeCase) -> (Setup, RunConv) {
    let a = case.args;
    let (xn, wn, on) = deconv_sizes(&a);
    let mut data = Gen::new(case.seed);
    let mut x = data.normal(xn, f64::from(case.x_scale));
    let mut weight = data.normal(wn, f64::from(case.w_scale));
    data.skip(1); // the bias stream of the forward
    let mut dout = data.normal(on, f64::from(case.grad_scale));
    // The parameter gradients start at about the size of the sums they receive, so the
    // accumulation is visible and the normwise comparison is not dominated by either.
    let pixels = a.batch * a.height * a.width;
    let dw_scale = f64::from(case.x_scale) * f64::from(case.grad_scale) * (pixels as f64).sqrt();
    let db_scale = f64::from(case.grad_scale) * ((on / a.out_channels) as f64).sqrt();
    let mut dweight = data.normal(wn, dw_scale.max(1e-3));
    let mut dbias = data.normal(a.out_channels, db_scale.max(1e-3));
    condition(xn, &mut [&mut x, &mut weight, &mut dout]);
    // dbias has at most a few elements: its element 0 (output plane 0 summed over maps
    // and pixels) gets terms of one sign, as the sum_broadcast check does; so does
    // dweight's element 0 (input channel 0 times output plane 0) when dweight is small.
    let plane = a.out_height() * a.out_width();
    let planes_0 = (0..a.batch).flat_map(|n| {
        let first = n * a.out_channels * plane;
        first..first + plane
    });
    make_non_negative(&mut dout, planes_0);
    make_non_negative(&mut dbias, [0]);
    if wn < FEW {
        let tokens = 1 + a.height * a.width;
        let channel_0 = (0..a.batch * tokens).map(|r| r * a.in_channels);
        make_non_negative(&mut x, channel_0);
        make_non_negative(&mut dweight, [0]);
    }
    let slots = vec![
        Slot::written("dx", Role::Activation, xn),
        Slot::updated("dweight", Role::Gradient, dweight),
        Slot::updated("dbias", Role::Gradient, dbias),
        Slot::input("dout", Role::Activation, dout),
        Slot::input("x", Role::Activation, x),
        Slot::input("weight", Role::Param, weight),
    ];
    (
        Setup::new(Op::ConvTransposeBackward, case, slots),
        RunConv::DeconvBackward(a),
    )
}

/// [`cim_spec::backend::Conv::conv_transpose_forward`]: `out` starts as NaN.
pub fn conv_transpose_forward_case<B: Backend>(
    backend: &B,
    case: &ConvTransposeCase,
) -> Result<(), Mismatch> {
    let (setup, program) = deconv_forward_setup(case);
    setup.compare(backend, &program)
}

/// [`cim_spec::backend::Conv::conv_transpose_backward`]: `dx` starts as NaN, `dweight`
/// and `dbias` start nonzero (`+=`).
pub fn conv_transpose_backward_case<B: Backend>(
    backend: &B,
    case: &ConvTransposeCase,
) -> Result<(), Mismatch> {
    let (setup, program) = deconv_backward_setup(case);
    setup.compare(backend, &program)
}
