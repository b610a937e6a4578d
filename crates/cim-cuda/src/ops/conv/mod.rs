//! [`Conv`] on the device (S4's Figure 4 options): the depthwise cross-correlation of the
//! "conv" correlation and the transposed convolution of the deconvolution predictor, both
//! directions, as the gathers of `kernels.cu` (every output has one owner and a fixed
//! summation order, so the bits repeat).
//!
//! The transposed convolution's weight gradient is a reduction over all N H W input pixels,
//! too long for one warp: it runs in two passes, a fixed number of slices of the pixels
//! summed in parallel and then added in slice order. Their partial sums live in `dx`, which
//! the op must write anyway and therefore computes last; the slice count depends on the
//! shapes only.

use cim_spec::backend::{Conv, ConvTransposeArgs, Elementwise, XcorrArgs};

use super::kernels::conv as k;
use crate::device::{Device, LaunchDims};
use crate::error::CudaError;
use crate::{Cuda, DeviceView, DeviceViewMut};

const THREADS: u32 = 256;
/// Outputs per warp of the transposed convolution's forward and input gradient
/// (`DECONV_STRIP` in kernels.cu; here it only sizes the grid).
const DECONV_STRIP: usize = 8;
/// Weight columns per warp of the weight gradient (`DECONV_TAP_GROUP` in kernels.cu; here it
/// only sizes the grid and the slice count).
const TAP_GROUP: usize = 8;
/// Warps the weight gradient aims for (enough to fill an H100 several times over).
const TARGET_WARPS: usize = 8192;
/// Fewest input pixels a weight-gradient slice sums, so a slice outweighs its bookkeeping.
const MIN_SLICE_PIXELS: usize = 16;
/// Shared memory for 32 staged weight rows; longer rows are read from global memory.
const MAX_STAGED_BYTES: usize = 48 * 1024;

/// `value` as a kernel's `int`, or an invalid-argument error naming it.
fn int(what: &str, value: usize) -> Result<i32, CudaError> {
    i32::try_from(value).map_err(|_| {
        CudaError::invalid(format!(
            "{what} = {value} exceeds the conv kernels' 32-bit sizes"
        ))
    })
}

fn correlate_args(
    out: u64,
    src: u64,
    t: u64,
    a: &XcorrArgs,
) -> Result<k::CorrelateArgs, CudaError> {
    int("height * width + 1", a.height * a.width + 1)?;
    int("kernel_h * kernel_w + 1", a.kernel_h * a.kernel_w + 1)?;
    Ok(k::CorrelateArgs {
        out,
        src,
        t,
        batch: int("batch", a.batch)?,
        channels: int("channels", a.channels)?,
        height: int("height", a.height)?,
        width: int("width", a.width)?,
        kernel_h: int("kernel_h", a.kernel_h)?,
        kernel_w: int("kernel_w", a.kernel_w)?,
        pad_h: int("pad_h", a.pad_h())?,
        pad_w: int("pad_w", a.pad_w())?,
        scale: a.scale,
    })
}

/// The transposed convolution's sizes as kernel `int`s.
struct DeconvSizes {
    batch: i32,
    in_channels: i32,
    out_channels: i32,
    height: i32,
    width: i32,
    kernel: i32,
    stride: i32,
    padding: i32,
    out_height: i32,
    out_width: i32,
    /// Weight columns `C_out k k` (the weight viewed as `[C_in, cols]`).
    cols: usize,
}

impl DeconvSizes {
    fn new(a: &ConvTransposeArgs) -> Result<Self, CudaError> {
        let (oh, ow) = (a.out_height(), a.out_width());
        let cols = a.out_channels * a.kernel * a.kernel;
        int("out_channels * kernel^2", cols)?;
        int("height * width + 1", a.height * a.width + 1)?;
        // The kernels step an output index past the map by up to a strip of strides.
        int(
            "output side + 2 padding + strip",
            oh.max(ow) + 2 * a.padding + (DECONV_STRIP + 1) * a.stride,
        )?;
        Ok(DeconvSizes {
            batch: int("batch", a.batch)?,
            in_channels: int("in_channels", a.in_channels)?,
            out_channels: int("out_channels", a.out_channels)?,
            height: int("height", a.height)?,
            width: int("width", a.width)?,
            kernel: int("kernel", a.kernel)?,
            stride: int("stride", a.stride)?,
            padding: int("padding", a.padding)?,
            out_height: int("out_height", oh)?,
            out_width: int("out_width", ow)?,
            cols,
        })
    }

    /// The odd row stride of 32 weight rows staged in shared memory, or 0 when they do not
    /// fit; and the shared memory that takes.
    fn staging(&self) -> (i32, usize) {
        let stride = self.cols | 1;
        let bytes = 32 * stride * size_of::<f32>();
        if bytes <= MAX_STAGED_BYTES {
            (stride as i32, bytes)
        } else {
            (0, 0)
        }
    }
}

/// How many slices the weight gradient cuts the N H W input pixels into: enough for about
/// [`TARGET_WARPS`] warps, at least [`MIN_SLICE_PIXELS`] pixels each, and no more than
/// `dx_len` elements hold (each slice's partial sums take `2 C_in C_out k^2` f32 slots).
fn weight_grad_slices(a: &ConvTransposeArgs, dx_len: usize) -> usize {
    let cols = a.out_channels * a.kernel * a.kernel;
    let pixels = a.batch * a.height * a.width;
    let warps_per_slice = a.in_channels.div_ceil(32) * cols.div_ceil(TAP_GROUP);
    let fit = dx_len / (2 * cols * a.in_channels);
    TARGET_WARPS
        .div_ceil(warps_per_slice)
        .min(pixels.div_ceil(MIN_SLICE_PIXELS))
        .min(fit)
        .max(1)
}

/// A launch of one warp per item, 8 warps a block.
fn warps(items: usize) -> LaunchDims {
    LaunchDims::linear(items.saturating_mul(32), THREADS)
}

impl<D: Device> Conv for Cuda<D> {
    fn depthwise_xcorr_forward(
        &self,
        out: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        t: DeviceView<'_>,
        args: &XcorrArgs,
    ) -> Result<(), CudaError> {
        if out.len() == 0 {
            return Ok(());
        }
        let params = correlate_args(out.ptr(), x.ptr(), t.ptr(), args)?;
        self.launch(
            &k::XCORR_FORWARD,
            LaunchDims::linear(out.len(), THREADS),
            params,
        )
    }

    fn depthwise_xcorr_backward(
        &self,
        dx: DeviceViewMut<'_>,
        dt: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        x: DeviceView<'_>,
        t: DeviceView<'_>,
        args: &XcorrArgs,
    ) -> Result<(), CudaError> {
        if dx.len() == 0 {
            return Ok(());
        }
        let params = correlate_args(dx.ptr(), dout.ptr(), t.ptr(), args)?;
        self.launch(
            &k::XCORR_INPUT_GRAD,
            LaunchDims::linear(dx.len(), THREADS),
            params,
        )?;
        let params = k::CorrelateKernelGradArgs {
            dt: dt.ptr(),
            dout: dout.ptr(),
            x: x.ptr(),
            batch: params.batch,
            channels: params.channels,
            height: params.height,
            width: params.width,
            kernel_h: params.kernel_h,
            kernel_w: params.kernel_w,
            pad_h: params.pad_h,
            pad_w: params.pad_w,
            scale: params.scale,
        };
        self.launch(
            &k::XCORR_KERNEL_GRAD,
            LaunchDims::linear(dt.len(), THREADS),
            params,
        )
    }

    fn conv_transpose_forward(
        &self,
        out: DeviceViewMut<'_>,
        x: DeviceView<'_>,
        weight: DeviceView<'_>,
        bias: DeviceView<'_>,
        args: &ConvTransposeArgs,
    ) -> Result<(), CudaError> {
        if out.len() == 0 {
            return Ok(());
        }
        let s = DeconvSizes::new(args)?;
        let (staged_stride, shared) = s.staging();
        let phase_columns = args.out_width().div_ceil(args.stride);
        let items =
            args.batch * args.out_height() * args.stride * phase_columns.div_ceil(DECONV_STRIP);
        let params = k::DeconvForwardArgs {
            out: out.ptr(),
            x: x.ptr(),
            weight: weight.ptr(),
            bias: bias.ptr(),
            batch: s.batch,
            in_channels: s.in_channels,
            out_channels: s.out_channels,
            height: s.height,
            width: s.width,
            kernel: s.kernel,
            stride: s.stride,
            padding: s.padding,
            out_height: s.out_height,
            out_width: s.out_width,
            staged_stride,
        };
        self.launch(&k::DECONV_FORWARD, warps(items).with_shared(shared), params)
    }

    fn conv_transpose_backward(
        &self,
        dx: DeviceViewMut<'_>,
        dweight: DeviceViewMut<'_>,
        dbias: DeviceViewMut<'_>,
        dout: DeviceView<'_>,
        x: DeviceView<'_>,
        weight: DeviceView<'_>,
        args: &ConvTransposeArgs,
    ) -> Result<(), CudaError> {
        if args.batch == 0 {
            return Ok(());
        }
        let s = DeconvSizes::new(args)?;
        let cin = args.in_channels;

        // dweight += x^T dout, through partial sums held in dx (written last, below).
        let slices = weight_grad_slices(args, dx.len());
        let per_slice = cin.div_ceil(32) * s.cols.div_ceil(TAP_GROUP);
        let params = k::DeconvWeightGradArgs {
            dweight: dweight.ptr(),
            partial: dx.ptr(),
            dout: dout.ptr(),
            x: x.ptr(),
            batch: s.batch,
            in_channels: s.in_channels,
            out_channels: s.out_channels,
            height: s.height,
            width: s.width,
            kernel: s.kernel,
            stride: s.stride,
            padding: s.padding,
            out_height: s.out_height,
            out_width: s.out_width,
            slices: int("weight-gradient slices", slices)?,
        };
        self.launch(&k::DECONV_WEIGHT_GRAD, warps(per_slice * slices), params)?;
        if slices > 1 {
            let params = k::DeconvWeightSumArgs {
                dweight: dweight.ptr(),
                partial: dx.ptr(),
                in_channels: s.in_channels,
                cols: int("weight columns", s.cols)?,
                slices: params.slices,
            };
            self.launch(
                &k::DECONV_WEIGHT_SUM,
                LaunchDims::linear(s.cols * cin, THREADS),
                params,
            )?;
        }

        let (staged_stride, shared) = s.staging();
        let items = args.batch * args.height * args.width.div_ceil(DECONV_STRIP);
        let params = k::DeconvInputGradArgs {
            dx: dx.ptr(),
            dout: dout.ptr(),
            weight: weight.ptr(),
            batch: s.batch,
            in_channels: s.in_channels,
            out_channels: s.out_channels,
            height: s.height,
            width: s.width,
            kernel: s.kernel,
            stride: s.stride,
            padding: s.padding,
            out_height: s.out_height,
            out_width: s.out_width,
            staged_stride,
        };
        self.launch(
            &k::DECONV_INPUT_GRAD,
            warps(items).with_shared(shared),
            params,
        )?;

        let plane = args.out_height() * args.out_width();
        self.sum_broadcast(dbias, dout, args.batch, args.out_channels, plane)
    }
}

#[cfg(test)]
mod tests {
    //! What the conformance suite's random shapes do not reach: weight rows too long to
    //! stage, more than 32 input channels, and which outputs a NaN reaches (and no others).

    use cim_spec::backend::{Conv, ConvTransposeArgs, Memory, Role, XcorrArgs};
    use conformance::cases::ConvTransposeCase;

    use super::{DeconvSizes, weight_grad_slices};
    use crate::{Cuda, Emulator};

    fn deconv_case(args: ConvTransposeArgs) -> ConvTransposeCase {
        ConvTransposeCase {
            seed: 11,
            args,
            x_scale: 1.0,
            w_scale: 1.0,
            grad_scale: 1.0,
        }
    }

    #[test]
    fn long_weight_rows_are_read_in_place() {
        let args = ConvTransposeArgs {
            batch: 2,
            in_channels: 3,
            out_channels: 1,
            height: 2,
            width: 3,
            kernel: 20,
            stride: 3,
            padding: 2,
        };
        assert_eq!(DeconvSizes::new(&args).unwrap().staging(), (0, 0));
        let b = Cuda::emulated();
        conformance::conv_transpose_forward_case(&b, &deconv_case(args)).unwrap();
        conformance::conv_transpose_backward_case(&b, &deconv_case(args)).unwrap();
    }

    #[test]
    fn two_weight_chunks_and_weight_gradient_slices() {
        // 40 channels: two chunks of staged weight rows (the second partial), and a weight
        // gradient in 4 slices of the 70 pixels.
        let args = ConvTransposeArgs {
            batch: 2,
            in_channels: 40,
            out_channels: 1,
            height: 5,
            width: 7,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        assert_eq!(weight_grad_slices(&args, 2 * 36 * 40), 4);
        let b = Cuda::emulated();
        conformance::conv_transpose_forward_case(&b, &deconv_case(args)).unwrap();
        conformance::conv_transpose_backward_case(&b, &deconv_case(args)).unwrap();
    }

    /// Deterministic inputs in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Runs an op on the emulator: uploads `inputs`, allocates outputs of `output_lens`
    /// (zeros, so accumulated ones start finite), calls `op` and returns the outputs, joined.
    fn run(
        inputs: &[Vec<f32>],
        output_lens: &[usize],
        op: impl Fn(
            &Cuda<Emulator>,
            &mut [crate::DeviceBuffer<Emulator>],
            &[crate::DeviceBuffer<Emulator>],
        ),
    ) -> Vec<f32> {
        let b = Cuda::emulated();
        let mut ins = Vec::new();
        for v in inputs {
            let mut buf = b.alloc(v.len(), Role::Activation).unwrap();
            b.upload(b.view_mut(&mut buf, 0..v.len()), v).unwrap();
            ins.push(buf);
        }
        let mut outs = Vec::new();
        for &len in output_lens {
            let mut buf = b.alloc(len, Role::Gradient).unwrap();
            b.upload(b.view_mut(&mut buf, 0..len), &vec![0.0; len])
                .unwrap();
            outs.push(buf);
        }
        op(&b, &mut outs, &ins);
        let mut joined = Vec::new();
        for (buf, &len) in outs.iter().zip(output_lens) {
            let mut host = vec![0.0; len];
            b.download(b.view(buf, 0..len), &mut host).unwrap();
            joined.extend(host);
        }
        joined
    }

    /// Poisons element `index` of input `which` with NaN and with infinity: exactly the
    /// outputs that change when that element changes must come out non-finite (none, for a
    /// class token).
    fn nan_reaches_dependents(
        inputs: &[Vec<f32>],
        which: usize,
        index: usize,
        evaluate: impl Fn(&[Vec<f32>]) -> Vec<f32>,
    ) {
        let with = |value: f32| {
            let mut changed = inputs.to_vec();
            changed[which][index] = value;
            evaluate(&changed)
        };
        let (base, moved) = (evaluate(inputs), with(inputs[which][index] + 1.0));
        for poison in [f32::NAN, f32::INFINITY] {
            let got = with(poison);
            for (i, ((b, m), g)) in base.iter().zip(&moved).zip(&got).enumerate() {
                let depends = b != m;
                assert_eq!(
                    g.is_finite(),
                    !depends,
                    "input {which}[{index}] = {poison}: output {i} is {g}, depends: {depends}"
                );
            }
        }
    }

    #[test]
    fn nan_reaches_the_correlation_outputs_that_depend_on_it() {
        let a = XcorrArgs {
            batch: 2,
            channels: 3,
            height: 4,
            width: 5,
            kernel_h: 2,
            kernel_w: 3,
            scale: 0.5,
        };
        let (maps, kernels) = (2 * 21 * 3, 2 * 7 * 3);
        let inputs = [values(maps, 1), values(maps, 2), values(kernels, 3)];
        let forward = |v: &[Vec<f32>]| {
            run(&[v[1].clone(), v[2].clone()], &[maps], |b, o, i| {
                let out = b.view_mut(&mut o[0], 0..maps);
                b.depthwise_xcorr_forward(
                    out,
                    b.view(&i[0], 0..maps),
                    b.view(&i[1], 0..kernels),
                    &a,
                )
                .unwrap();
            })
        };
        let backward = |v: &[Vec<f32>]| {
            run(v, &[maps, kernels], |b, o, i| {
                let (dx, dt) = o.split_at_mut(1);
                let (dx, dt) = (
                    b.view_mut(&mut dx[0], 0..maps),
                    b.view_mut(&mut dt[0], 0..kernels),
                );
                let (dout, x, t) = (
                    b.view(&i[0], 0..maps),
                    b.view(&i[1], 0..maps),
                    b.view(&i[2], 0..kernels),
                );
                b.depthwise_xcorr_backward(dx, dt, dout, x, t, &a).unwrap();
            })
        };
        // A class token, a corner pixel, an inner pixel, a kernel tap; then dout, x and t of
        // the backward.
        for (which, index) in [
            (1, 1),
            (1, 3),
            (1, 21 * 3 + 8 * 3 + 2),
            (2, 7 * 3 + 5 * 3 + 1),
        ] {
            nan_reaches_dependents(&inputs, which, index, forward);
        }
        for (which, index) in [
            (0, 2),
            (0, 4),
            (0, 21 * 3 + 20 * 3),
            (1, 11 * 3 + 1),
            (2, 1),
            (2, 3 + 2),
        ] {
            nan_reaches_dependents(&inputs, which, index, backward);
        }
    }

    #[test]
    fn nan_reaches_the_transposed_convolution_outputs_that_depend_on_it() {
        let a = ConvTransposeArgs {
            batch: 2,
            in_channels: 3,
            out_channels: 2,
            height: 3,
            width: 2,
            kernel: 4,
            stride: 2,
            padding: 1,
        };
        let (xn, wn, on) = (2 * 7 * 3, 3 * 2 * 16, 2 * 2 * 6 * 4);
        let inputs = [values(on, 4), values(xn, 5), values(wn, 6), values(2, 7)];
        let forward = |v: &[Vec<f32>]| {
            run(
                &[v[1].clone(), v[2].clone(), v[3].clone()],
                &[on],
                |b, o, i| {
                    let out = b.view_mut(&mut o[0], 0..on);
                    let (x, w, bias) = (
                        b.view(&i[0], 0..xn),
                        b.view(&i[1], 0..wn),
                        b.view(&i[2], 0..2),
                    );
                    b.conv_transpose_forward(out, x, w, bias, &a).unwrap();
                },
            )
        };
        let backward = |v: &[Vec<f32>]| {
            run(&v[..3], &[xn, wn, 2], |b, o, i| {
                let (dx, rest) = o.split_at_mut(1);
                let (dw, db) = rest.split_at_mut(1);
                let dx = b.view_mut(&mut dx[0], 0..xn);
                let (dw, db) = (b.view_mut(&mut dw[0], 0..wn), b.view_mut(&mut db[0], 0..2));
                let (dout, x, w) = (
                    b.view(&i[0], 0..on),
                    b.view(&i[1], 0..xn),
                    b.view(&i[2], 0..wn),
                );
                b.conv_transpose_backward(dx, dw, db, dout, x, w, &a)
                    .unwrap();
            })
        };
        for (which, index) in [(1, 2), (1, 3), (1, 7 * 3 + 6 * 3 + 2), (2, 17), (3, 1)] {
            nan_reaches_dependents(&inputs, which, index, forward);
        }
        for (which, index) in [(0, 0), (0, 24 + 13), (1, 7 * 3), (1, 3 + 1), (2, 16 + 5)] {
            nan_reaches_dependents(&inputs, which, index, backward);
        }
    }
}
