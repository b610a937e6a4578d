//! The CIM network and its training step, written once over the `cim-spec` backend traits.
//!
//! [`Cim`] holds the parameters (online encoder, class token and decoder in one buffer,
//! the target encoder in another, laid out by [`layout::ParamLayout`]), their gradients
//! and AdamW moments, and the activations of one micro-batch. A training step is
//! [`Cim::zero_grads`], one [`Cim::forward_backward`] per micro-batch (S6 accumulation),
//! then [`Cim::optimizer_step`] (AdamW, then the EMA target update of S7). Every backend
//! gets the whole step from its ops; nothing here touches files, threads or clocks.
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

mod block;
mod decoder;
mod encoder;
pub mod layout;
mod nn;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use cim_spec::backend::{AdamWArgs, Backend, MapLossArgs, Role};
use cim_spec::config::{ConfigError, ModelConfig};
use cim_spec::init::{self, InitError};
use cim_spec::ops;
use cim_spec::pos_embed::{self, PosEmbedError};
use cim_spec::rng::CimRng;
use cim_spec::schedule::AdamW;

use block::Weights;
use decoder::{DecoderActs, DecoderGrads};
use encoder::{EncoderGrads, EncoderStream};
use layout::ParamLayout;
use nn::{all, all_mut};

pub use cim_spec;

/// Why a model could not be built.
#[derive(Debug)]
pub enum ModelError<E> {
    /// The configuration is invalid.
    Config(ConfigError),
    /// The position embedding could not be built for these sizes.
    PosEmbed(PosEmbedError),
    /// A tensor could not be initialised.
    Init(InitError),
    /// The backend failed (allocation, upload).
    Backend(E),
}

impl<E: fmt::Display> fmt::Display for ModelError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Config(e) => write!(f, "{e}"),
            ModelError::PosEmbed(e) => write!(f, "position embedding: {e:?}"),
            ModelError::Init(e) => write!(f, "initialisation: {e:?}"),
            ModelError::Backend(e) => write!(f, "backend: {e}"),
        }
    }
}

impl<E> From<E> for ModelError<E> {
    fn from(e: E) -> Self {
        ModelError::Backend(e)
    }
}

/// One micro-batch on the device, in the layouts the model reads (S1): contexts
/// `[B, 3, m, m]`, exemplars `[B K, 3, n, n]` (the K of context b at rows bK..bK+K),
/// ground-truth maps `[B K, m, m]` as 0/1.
pub struct Batch<B: Backend> {
    /// Normalised contexts.
    pub context: B::Buffer,
    /// Normalised exemplars.
    pub exemplars: B::Buffer,
    /// Ground-truth maps.
    pub maps: B::Buffer,
}

impl<B: Backend> Batch<B> {
    /// Allocates a batch of `batch` contexts for `config`.
    pub fn new(b: &B, config: &ModelConfig, batch: usize) -> Result<Self, B::Error> {
        let (m, n, k) = (config.context_size, config.exemplar_size, config.exemplars);
        Ok(Batch {
            context: b.alloc(batch * 3 * m * m, Role::Activation)?,
            exemplars: b.alloc(batch * k * 3 * n * n, Role::Activation)?,
            maps: b.alloc(batch * k * m * m, Role::Activation)?,
        })
    }

    /// Uploads host values into the batch (lengths as [`Batch::new`] allocated).
    pub fn upload(
        &mut self,
        b: &B,
        context: &[f32],
        exemplars: &[f32],
        maps: &[f32],
    ) -> Result<(), B::Error> {
        b.upload(all_mut(b, &mut self.context), context)?;
        b.upload(all_mut(b, &mut self.exemplars), exemplars)?;
        b.upload(all_mut(b, &mut self.maps), maps)
    }
}

/// The CIM model and its optimizer state, for a fixed micro-batch size.
pub struct Cim<B: Backend> {
    config: ModelConfig,
    layout: ParamLayout,
    batch: usize,
    params: B::Buffer,
    target: B::Buffer,
    grads: B::Buffer,
    moment1: B::Buffer,
    moment2: B::Buffer,
    online: EncoderStream<B>,
    target_stream: EncoderStream<B>,
    decoder: DecoderActs<B>,
    online_grads: EncoderGrads<B>,
    decoder_grads: DecoderGrads<B>,
    loss: B::Buffer,
    norm_sq: B::Buffer,
    steps: u64,
}

/// The fixed encoder position embedding for a `grid x grid` input (S3): the 2-D sin-cos
/// table of the G0 grid, resized bicubically for "another grid size". At G0 itself the
/// table is used as it is, as timm does at its native resolution (PyTorch's resize with
/// scale (G0 + 0.1)/G0 would move it), so exported encoders give the same features there.
fn encoder_pos(config: &ModelConfig, grid: usize) -> Result<Vec<f32>, PosEmbedError> {
    let e = &config.encoder;
    let base = pos_embed::sincos_2d(e.dim, e.pos_grid())?;
    if grid == e.pos_grid() {
        return Ok(base);
    }
    pos_embed::resize_bicubic(&base, e.dim, e.pos_grid(), grid)
}

impl<B: Backend> Cim<B> {
    /// Builds the model for micro-batches of `batch` contexts, initialised by S8 from
    /// `seed` (tensor i draws from `CimRng::derive(seed, [i])`); the target starts equal
    /// to the online encoder (S7).
    pub fn new(
        b: &B,
        config: ModelConfig,
        batch: usize,
        seed: u64,
    ) -> Result<Self, ModelError<B::Error>> {
        config.validate().map_err(ModelError::Config)?;
        let layout = ParamLayout::new(&config);
        let mut host = vec![0.0f32; layout.total];
        for (i, t) in layout.tensors.iter().enumerate() {
            let mut rng = CimRng::derive(seed, &[i as u64]);
            init::fill(t.init, &t.shape, &mut rng, &mut host[t.range.clone()])
                .map_err(ModelError::Init)?;
        }
        let mut params = b.alloc(layout.total, Role::Param)?;
        b.upload(all_mut(b, &mut params), &host)?;
        let mut target = b.alloc(layout.ema.len(), Role::Param)?;
        b.upload(all_mut(b, &mut target), &host[layout.ema.clone()])?;
        let alloc_zero = |role| -> Result<B::Buffer, B::Error> {
            let mut buf = b.alloc(layout.total, role)?;
            b.fill(all_mut(b, &mut buf), 0.0)?;
            Ok(buf)
        };
        let grads = alloc_zero(Role::Gradient)?;
        let moment1 = alloc_zero(Role::State)?;
        let moment2 = alloc_zero(Role::State)?;
        let e = &config.encoder;
        let (gz, gc) = (config.exemplar_grid(), config.context_grid());
        let pos_z = encoder_pos(&config, gz).map_err(ModelError::PosEmbed)?;
        let pos_c = encoder_pos(&config, gc).map_err(ModelError::PosEmbed)?;
        let pos_dec =
            pos_embed::sincos_2d(config.decoder.width, gc).map_err(ModelError::PosEmbed)?;
        let online = EncoderStream::new(b, e, batch * config.exemplars, gz, &pos_z)?;
        let target_stream = EncoderStream::new(b, e, batch, gc, &pos_c)?;
        let decoder = DecoderActs::new(b, &config, batch, &pos_dec)?;
        let online_grads = EncoderGrads::new(b, &online)?;
        let decoder_grads = DecoderGrads::new(b, &decoder)?;
        let loss = b.alloc(1, Role::State)?;
        let norm_sq = b.alloc(1, Role::State)?;
        Ok(Cim {
            config,
            layout,
            batch,
            params,
            target,
            grads,
            moment1,
            moment2,
            online,
            target_stream,
            decoder,
            online_grads,
            decoder_grads,
            loss,
            norm_sq,
            steps: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Where every tensor lives.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Contexts per micro-batch.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The online parameters (layout order), the target encoder (the layout's EMA
    /// range), the gradients and the two AdamW moments, in that order.
    pub fn buffers(&self) -> [&B::Buffer; 5] {
        [
            &self.params,
            &self.target,
            &self.grads,
            &self.moment1,
            &self.moment2,
        ]
    }

    /// Mutable access to the same buffers (to restore a checkpoint), and the step count.
    pub fn buffers_mut(&mut self) -> ([&mut B::Buffer; 5], &mut u64) {
        (
            [
                &mut self.params,
                &mut self.target,
                &mut self.grads,
                &mut self.moment1,
                &mut self.moment2,
            ],
            &mut self.steps,
        )
    }

    /// The logit maps of the last forward pass, `[B K, C, m, m]`.
    pub fn logits(&self) -> &B::Buffer {
        &self.decoder.logits
    }

    /// The loss of the last forward pass (one element).
    pub fn loss(&self) -> &B::Buffer {
        &self.loss
    }

    /// Zeroes the gradients; call before the first micro-batch of an accumulation group.
    pub fn zero_grads(&mut self, b: &B) -> Result<(), B::Error> {
        b.fill(all_mut(b, &mut self.grads), 0.0)
    }

    fn loss_args(&self, accum: usize) -> MapLossArgs {
        let c = &self.config;
        MapLossArgs {
            kind: c.loss,
            maps: self.batch * c.exemplars,
            pixels: c.context_size * c.context_size,
            scale: 1.0 / (self.batch * accum.max(1)) as f32,
        }
    }

    /// Forward pass only: target on the contexts, online on the exemplars, decoder, and
    /// the loss against the batch's maps (scaled for one micro-batch, no accumulation).
    pub fn forward(&mut self, b: &B, batch: &Batch<B>) -> Result<(), B::Error> {
        self.forward_inner(b, batch, 1)
    }

    fn forward_inner(&mut self, b: &B, batch: &Batch<B>, accum: usize) -> Result<(), B::Error> {
        let l = &self.layout;
        let online_w = Weights {
            buf: &self.params,
            shift: 0,
        };
        let target_w = Weights {
            buf: &self.target,
            shift: l.ema.start,
        };
        let cls = b.view(&self.params, l.cls.clone());
        self.target_stream
            .forward(b, &target_w, &l.encoder, cls, all(b, &batch.context))?;
        self.online
            .forward(b, &online_w, &l.encoder, cls, all(b, &batch.exemplars))?;
        let args = self.loss_args(accum);
        self.decoder.forward(
            b,
            &online_w,
            &l.decoder,
            all(b, &self.target_stream.hidden),
            all(b, &self.online.hidden),
            Some((&mut self.loss, all(b, &batch.maps), &args)),
        )
    }

    /// One micro-batch: forward, loss (divided by `accum` micro-batches per step, S6) and
    /// backward; gradients accumulate.
    pub fn forward_backward(
        &mut self,
        b: &B,
        batch: &Batch<B>,
        accum: usize,
    ) -> Result<(), B::Error> {
        self.forward_backward_reporting(b, batch, accum, &mut |_, _| {})
    }

    /// [`Cim::forward_backward`], telling `ready` as the backward goes which gradients are
    /// done: it is called once per trainable tensor, with the gradient buffer and the
    /// tensor's range in it, as soon as no later op of this backward writes that range,
    /// in the order of [`ParamLayout::completion_order`] (frozen tensors are never
    /// reported). The values in the range are then those the whole call leaves, so on
    /// the last micro-batch of an accumulation group they are the group's gradients
    /// (earlier micro-batches report the same ranges, whose values later micro-batches
    /// still add to). `ready` may start work on the range (an all-reduce) that the
    /// backend orders before any later write; it must not write elsewhere in the buffer.
    /// Ops are queued as in [`Cim::forward_backward`], so a backend may not have
    /// finished the range when it is reported: `ready` sees it through the backend.
    pub fn forward_backward_reporting(
        &mut self,
        b: &B,
        batch: &Batch<B>,
        accum: usize,
        ready: &mut dyn FnMut(&mut B::Buffer, Range<usize>),
    ) -> Result<(), B::Error> {
        self.forward_inner(b, batch, accum)?;
        let l = &self.layout;
        let w = Weights {
            buf: &self.params,
            shift: 0,
        };
        let args = self.loss_args(accum);
        self.decoder.backward(
            b,
            &w,
            &l.decoder,
            &mut self.grads,
            all(b, &self.target_stream.hidden),
            all(b, &self.online.hidden),
            all(b, &batch.maps),
            &args,
            &mut self.decoder_grads,
            ready,
        )?;
        let train_patch = !self.config.encoder.frozen_patch_embed;
        self.online.backward(
            b,
            &w,
            &l.encoder,
            &l.cls,
            train_patch,
            &mut self.grads,
            &self.decoder_grads.dhz,
            &mut self.online_grads,
            ready,
        )
    }

    /// The global gradient norm (over every trainable tensor), computed on the device;
    /// non-finite when any gradient element is.
    pub fn grad_norm(&mut self, b: &B) -> Result<f32, B::Error> {
        ops::sum_squares(b, all_mut(b, &mut self.norm_sq), all(b, &self.grads))?;
        let mut host = [0.0f32];
        b.download(all(b, &self.norm_sq), &mut host)?;
        Ok(libm::sqrtf(host[0]))
    }

    /// Clips the gradients to global norm `max_norm` (S6 option), reading the norm that
    /// [`Cim::grad_norm`] left on the device.
    pub fn clip_grads(&mut self, b: &B, max_norm: f32) -> Result<(), B::Error> {
        ops::clip_by_norm(
            b,
            all_mut(b, &mut self.grads),
            all(b, &self.norm_sq),
            max_norm,
        )
    }

    /// The name of the first trainable tensor (layout order) holding a non-finite
    /// gradient, for the error that stops a run.
    pub fn first_non_finite_grad(&self, b: &B) -> Result<Option<&str>, B::Error> {
        let mut host = vec![0.0f32; self.layout.total];
        b.download(all(b, &self.grads), &mut host)?;
        Ok(self
            .layout
            .tensors
            .iter()
            .find(|t| host[t.range.clone()].iter().any(|v| !v.is_finite()))
            .map(|t| t.name.as_str()))
    }

    /// AdamW on every trainable tensor (S6: decay group and no-decay group, learning rate
    /// `opt.lr`), then the EMA update of the target with `momentum` (S7).
    pub fn optimizer_step(&mut self, b: &B, opt: &AdamW, momentum: f64) -> Result<(), B::Error> {
        self.steps += 1;
        let l = &self.layout;
        for (range, weight_decay) in [
            (l.no_decay.clone(), 0.0),
            (l.decay.clone(), opt.weight_decay),
        ] {
            if range.is_empty() {
                continue;
            }
            let args = AdamWArgs {
                lr: opt.lr,
                weight_decay,
                beta1: opt.beta1,
                beta2: opt.beta2,
                eps: opt.eps,
                step: self.steps,
            };
            ops::adamw_update(
                b,
                b.view_mut(&mut self.params, range.clone()),
                b.view_mut(&mut self.moment1, range.clone()),
                b.view_mut(&mut self.moment2, range.clone()),
                b.view(&self.grads, range),
                &args,
            )?;
        }
        ops::ema_update(
            b,
            all_mut(b, &mut self.target),
            b.view(&self.params, l.ema.clone()),
            momentum,
        )
    }
}

/// Which encoder of a model to read (S12 export and S10 evaluation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderChoice {
    /// The online network f (trained by AdamW).
    Online,
    /// The target network f* (the EMA copy).
    Target,
}

/// Frozen-feature extraction (S10): an encoder pass over `batch` images of one size and
/// the mean of the final LayerNorm's patch tokens, `[batch, D]`.
pub struct FeatureExtractor<B: Backend> {
    stream: EncoderStream<B>,
    pooled: B::Buffer,
}

impl<B: Backend> FeatureExtractor<B> {
    /// An extractor for `batch` square images of side `image_size` (a multiple of the
    /// patch), with the position embedding resized to that grid (S3).
    pub fn new(
        b: &B,
        config: &ModelConfig,
        batch: usize,
        image_size: usize,
    ) -> Result<Self, ModelError<B::Error>> {
        let p = config.encoder.patch;
        if image_size == 0 || !image_size.is_multiple_of(p) {
            return Err(ModelError::Config(ConfigError::NotMultiple {
                what: "feature image size",
                value: image_size,
                of: p,
            }));
        }
        let grid = image_size / p;
        let pos = encoder_pos(config, grid).map_err(ModelError::PosEmbed)?;
        let stream = EncoderStream::new(b, &config.encoder, batch, grid, &pos)?;
        let pooled = b.alloc(batch * config.encoder.dim, Role::Activation)?;
        Ok(FeatureExtractor { stream, pooled })
    }

    /// Encodes `images` (`[batch, 3, s, s]`, normalised) with `model`'s `which` encoder.
    pub fn forward(
        &mut self,
        b: &B,
        model: &Cim<B>,
        which: EncoderChoice,
        images: B::View<'_>,
    ) -> Result<(), B::Error> {
        let l = &model.layout;
        let w = match which {
            EncoderChoice::Online => Weights {
                buf: &model.params,
                shift: 0,
            },
            EncoderChoice::Target => Weights {
                buf: &model.target,
                shift: l.ema.start,
            },
        };
        let cls = b.view(&model.params, l.cls.clone());
        self.stream.forward(b, &w, &l.encoder, cls, images)?;
        let d = self.stream.dims;
        ops::mean_pool_forward(
            b,
            all_mut(b, &mut self.pooled),
            all(b, &self.stream.hidden),
            d.batch,
            d.tokens - 1,
            d.dim,
        )
    }

    /// The pooled features of the last forward, `[batch, D]`.
    pub fn features(&self) -> &B::Buffer {
        &self.pooled
    }
}
