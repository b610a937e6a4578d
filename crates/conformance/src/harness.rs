//! The one routine every check goes through: upload, run on both, compare.
//!
//! A check describes its op as a [`Setup`]: the op direction, the case, and one [`Slot`]
//! per buffer the op touches, with its initial f32 contents and whether it is an output.
//! A [`Program`] runs the op through `cim_spec::ops` on any backend, over the slots'
//! buffers in order. [`Setup::compare`] executes the program on the backend under test
//! and on [`Reference`], downloads the backend's outputs, reads the reference's f64
//! outputs straight from its `Vec<f64>` buffers (no rounding), and measures each output
//! with the tolerance table's rule. The same setup also serves the determinism rerun
//! ([`Setup::same_bits`]) and the NaN checks ([`Setup::poison`]).
//!
//! Initial contents follow the contract's write/accumulate rule: outputs an op writes start
//! as NaN (a backend that reads them fails), outputs it accumulates into or updates in
//! place start with nonzero values (a backend that overwrites them fails).
//!
//! Conditioning: the comparison is normwise over each output, relative to the output's
//! largest reference value. An output of a handful of elements whose sums happen to
//! cancel would make that largest value far smaller than the terms it was summed from,
//! and the rule would then ask an f32 implementation for more than the table's error
//! analysis promises (measured: one-element dot products, attention outputs and moment
//! updates of correct f32 code failed about once in a thousand cases). So when an output
//! has fewer than [`FEW`] elements, each check makes the terms of one of its elements
//! share a sign ([`make_non_negative`]).

use core::fmt;

use cim_reference::Reference;
use cim_spec::backend::{Backend, Memory, Precision, Role};
use cim_spec::rng::CimRng;
use cim_spec::tolerance::{Op, tolerance};

use crate::mismatch::{Mismatch, Problem};

/// One buffer of a check.
pub(crate) struct Slot {
    /// The argument's name in the contract (`"dgamma"`), used in reports.
    pub name: &'static str,
    /// What the buffer holds, for backends that store roles in different precisions.
    pub role: Role,
    /// The contents uploaded before the op runs.
    pub init: Vec<f32>,
    /// Whether the buffer is compared after the op.
    pub output: bool,
}

impl Slot {
    /// An input: uploaded, never compared.
    pub fn input(name: &'static str, role: Role, init: Vec<f32>) -> Self {
        Slot {
            name,
            role,
            init,
            output: false,
        }
    }

    /// An output the op writes (`=`): starts as NaN, compared.
    pub fn written(name: &'static str, role: Role, len: usize) -> Self {
        Slot {
            name,
            role,
            init: vec![f32::NAN; len],
            output: true,
        }
    }

    /// An output the op accumulates into or updates in place (`+=`, `*=`): starts with
    /// the given (nonzero) contents, compared.
    pub fn updated(name: &'static str, role: Role, init: Vec<f32>) -> Self {
        Slot {
            name,
            role,
            init,
            output: true,
        }
    }

    /// Scratch space the op may overwrite: starts as NaN, never compared.
    pub fn scratch(name: &'static str, len: usize) -> Self {
        Slot {
            name,
            role: Role::Activation,
            init: vec![f32::NAN; len],
            output: false,
        }
    }
}

/// Runs one op on any backend over buffers laid out as the setup's slots.
pub(crate) trait Program {
    /// Runs the op through `cim_spec::ops`; `bufs[i]` holds slot `i`.
    fn run<B: Backend>(&self, backend: &B, bufs: &mut [B::Buffer]) -> Result<(), B::Error>;
}

/// A shared view of a whole buffer.
pub(crate) fn whole<'a, B: Memory>(backend: &'a B, buf: &'a B::Buffer) -> B::View<'a> {
    backend.view(buf, 0..B::buffer_len(buf))
}

/// An exclusive view of a whole buffer.
pub(crate) fn whole_mut<'a, B: Memory>(backend: &'a B, buf: &'a mut B::Buffer) -> B::ViewMut<'a> {
    let len = B::buffer_len(buf);
    backend.view_mut(buf, 0..len)
}

/// Deterministic input data: tensor `i` of a case draws from its own stream
/// `CimRng::derive(seed, [i])`, so its values do not depend on the other tensors' sizes.
pub(crate) struct Gen {
    seed: u64,
    stream: u64,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen { seed, stream: 0 }
    }

    /// Passes over `streams` streams (those a related setup has drawn already).
    pub fn skip(&mut self, streams: u64) {
        self.stream += streams;
    }

    /// `len` values from `f(rng, index)`, on the next stream.
    pub fn with(&mut self, len: usize, mut f: impl FnMut(&mut CimRng, usize) -> f64) -> Vec<f32> {
        let mut rng = CimRng::derive(self.seed, &[self.stream]);
        self.stream += 1;
        (0..len).map(|i| f(&mut rng, i) as f32).collect()
    }

    /// `len` draws of `scale * N(0, 1)`.
    pub fn normal(&mut self, len: usize, scale: f64) -> Vec<f32> {
        self.with(len, |r, _| scale * r.normal())
    }

    /// `len` draws of `U(lo, hi)`.
    pub fn uniform(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f32> {
        self.with(len, |r, _| r.uniform(lo, hi))
    }
}

/// Everything a check needs besides the program: the op, the case and the buffers.
pub(crate) struct Setup {
    pub op: Op,
    pub case: String,
    pub slots: Vec<Slot>,
}

/// The backend's outputs of one run, by slot (empty for slots that are not outputs).
pub(crate) type Outputs = Vec<Vec<f32>>;

impl Setup {
    pub fn new(op: Op, case: &impl fmt::Debug, slots: Vec<Slot>) -> Self {
        Setup {
            op,
            case: format!("{case:?}"),
            slots,
        }
    }

    fn mismatch(&self, backend: &str, tensor: &'static str, problem: Problem) -> Mismatch {
        Mismatch {
            backend: backend.to_string(),
            op: self.op,
            tensor,
            case: self.case.clone(),
            problem,
        }
    }

    fn slot_index(&self, name: &str) -> usize {
        self.slots
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("check bug: no slot `{name}`"))
    }

    /// Sets element `index` of slot `name` to `value` (a NaN or infinity for the NaN
    /// checks).
    pub fn poison(&mut self, name: &str, index: usize, value: f32) {
        let i = self.slot_index(name);
        self.slots[i].init[index] = value;
    }

    /// Allocates and uploads every slot, then runs the program.
    fn execute<B: Backend, P: Program>(
        &self,
        backend: &B,
        program: &P,
    ) -> Result<Vec<B::Buffer>, B::Error> {
        let mut bufs = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let mut buf = backend.alloc(slot.init.len(), slot.role)?;
            backend.upload(whole_mut(backend, &mut buf), &slot.init)?;
            bufs.push(buf);
        }
        program.run(backend, &mut bufs)?;
        Ok(bufs)
    }

    /// Runs on the backend and downloads every output (no comparison).
    pub fn backend_outputs<B: Backend, P: Program>(
        &self,
        backend: &B,
        program: &P,
    ) -> Result<Outputs, Mismatch> {
        let error =
            |e: B::Error| self.mismatch(backend.name(), "-", Problem::BackendError(e.to_string()));
        let bufs = self.execute(backend, program).map_err(error)?;
        let mut outputs = Vec::with_capacity(bufs.len());
        for (slot, buf) in self.slots.iter().zip(&bufs) {
            let host = if slot.output {
                let mut host = vec![0.0f32; B::buffer_len(buf)];
                let view = whole(backend, buf);
                backend.download(view, &mut host).map_err(error)?;
                host
            } else {
                Vec::new()
            };
            outputs.push(host);
        }
        Ok(outputs)
    }

    /// Runs on the reference and returns every buffer in f64, exactly as it holds them.
    pub fn reference_run<P: Program>(&self, program: &P) -> Result<Vec<Vec<f64>>, Mismatch> {
        let reference = Reference::new();
        self.execute(&reference, program).map_err(|e| {
            self.mismatch(
                reference.name(),
                "-",
                Problem::ReferenceError(e.to_string()),
            )
        })
    }

    /// Runs the op on `backend` and on the reference and checks every output against the
    /// tolerance of `self.op` at the backend's precision; returns the backend's outputs.
    pub fn compare_outputs<B: Backend, P: Program>(
        &self,
        backend: &B,
        program: &P,
    ) -> Result<Outputs, Mismatch> {
        let got = self.backend_outputs(backend, program)?;
        let want = self.reference_run(program)?;
        for ((slot, got), want) in self.slots.iter().zip(&got).zip(&want) {
            if slot.output {
                let found = Found {
                    backend: backend.name(),
                    precision: backend.precision(),
                    tensor: slot.name,
                    values: got,
                };
                check_output(self.op, &self.case, found, want)?;
            }
        }
        Ok(got)
    }

    /// [`Setup::compare_outputs`] without the outputs.
    pub fn compare<B: Backend, P: Program>(
        &self,
        backend: &B,
        program: &P,
    ) -> Result<(), Mismatch> {
        self.compare_outputs(backend, program).map(drop)
    }

    /// Runs the op twice on `backend` from identical buffers and demands identical bits in
    /// every output.
    pub fn same_bits<B: Backend, P: Program>(
        &self,
        backend: &B,
        program: &P,
    ) -> Result<(), Mismatch> {
        let first = self.backend_outputs(backend, program)?;
        let second = self.backend_outputs(backend, program)?;
        for ((slot, a), b) in self.slots.iter().zip(&first).zip(&second) {
            if let Some(index) = a
                .iter()
                .zip(b)
                .position(|(x, y)| x.to_bits() != y.to_bits())
            {
                return Err(self.mismatch(
                    backend.name(),
                    slot.name,
                    Problem::NotDeterministic {
                        index,
                        first: a[index],
                        second: b[index],
                    },
                ));
            }
        }
        Ok(())
    }

    /// Fails unless every listed element of output `name` is NaN or infinite.
    pub fn expect_non_finite(
        &self,
        backend: &str,
        outputs: &Outputs,
        name: &'static str,
        indices: impl IntoIterator<Item = usize>,
    ) -> Result<(), Mismatch> {
        let values = &outputs[self.slot_index(name)];
        for index in indices {
            if values[index].is_finite() {
                return Err(self.mismatch(
                    backend,
                    name,
                    Problem::NonFiniteLost {
                        index,
                        value: values[index],
                    },
                ));
            }
        }
        Ok(())
    }
}

/// Below this many elements an output gets one element free of cancellation.
pub(crate) const FEW: usize = 16;

/// Makes the listed elements non-negative (the terms of one output element then share a
/// sign; see the module paragraph).
pub(crate) fn make_non_negative(values: &mut [f32], indices: impl IntoIterator<Item = usize>) {
    for i in indices {
        values[i] = values[i].abs();
    }
}

/// One output as the implementation under test produced it.
pub(crate) struct Found<'a> {
    pub backend: &'a str,
    pub precision: Precision,
    pub tensor: &'static str,
    pub values: &'a [f32],
}

/// The comparison rule of `cim_spec::tolerance`: `found` against the reference's `want`
/// under the tolerance of `op` at `found.precision`.
pub(crate) fn check_output(
    op: Op,
    case: &str,
    found: Found<'_>,
    want: &[f64],
) -> Result<(), Mismatch> {
    let tol = tolerance(op, found.precision);
    let (ratio, index) = tol.worst_ratio(found.values, want);
    // `!(ratio <= 1)` so that a NaN ratio fails too; a length difference is a failure.
    if ratio <= 1.0 && found.values.len() == want.len() {
        return Ok(());
    }
    let problem = if found.values.len() != want.len() {
        Problem::BackendError(format!(
            "{} elements where the reference has {}",
            found.values.len(),
            want.len()
        ))
    } else {
        Problem::OutOfTolerance {
            index,
            backend: found.values[index],
            reference: want[index],
            ratio,
            tolerance: tol,
        }
    };
    Err(Mismatch {
        backend: found.backend.to_string(),
        op,
        tensor: found.tensor,
        case: case.to_string(),
        problem,
    })
}

/// f64 values rounded to the f32 the next op's inputs are uploaded as.
pub(crate) fn to_f32(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}
