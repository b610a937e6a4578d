//! Model configurations: the ViT sizes of S3, the decoder of S4, the CIM geometry of S2/S9.
//!
//! Presets carry the paper's numbers; `micro` is a configuration small enough for the
//! whole-step conformance checks to run against the reference in seconds.

use crate::loss::MapLoss;

/// The ViT encoder (S3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Token width D.
    pub dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads (D must be a multiple).
    pub heads: usize,
    /// Patch side p.
    pub patch: usize,
    /// MLP hidden width is `mlp_ratio * D`.
    pub mlp_ratio: usize,
    /// Side of the image the fixed position embedding is built for (224: G0 = 224/p).
    pub pos_embed_size: usize,
    /// Keep the patch embedding frozen at its initialisation (S3 `stop_grad_conv`).
    pub frozen_patch_embed: bool,
}

/// How a decoder block correlates the context tokens with the exemplar tokens (S4 and
/// its Figure 4 option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Correlation {
    /// The paper's and the release's cross block:
    /// `x += Proj(MHA(q = LN1(x), k = v = LN1(t))); x += MLP(LN2(x))`.
    #[default]
    Attention,
    /// SiamFC-style correlation in place of the attention: the exemplar's patch features
    /// are kernels slid over the context's patch features,
    /// `x += Proj(XCorr(LN1(x), LN1(t))); x += MLP(LN2(x))`, where `XCorr` is the
    /// per-channel (depthwise) cross-correlation of the `g x g x d` context map with the
    /// `n' x n' x d` exemplar map, 'same' zero padding, scaled by `1 / n'` (see
    /// `cim_spec::backend::Conv::depthwise_xcorr_forward`). Depthwise rather than SiamFC's
    /// full-channel sum so the result keeps d channels and the block's Proj, MLP, LayerNorm
    /// and the d-channel predictor keep their meaning; Proj then mixes the channels (as
    /// SiamRPN++'s depthwise correlation is followed by a 1x1 conv). The correlation has
    /// no weights of its own (SiamFC's is parameter-free): the block has no q and kv
    /// projections, and its output projection is named `corr.proj`.
    Conv,
}

impl Correlation {
    /// The recipe and command-line name: `attention` or `conv`.
    pub fn name(self) -> &'static str {
        match self {
            Correlation::Attention => "attention",
            Correlation::Conv => "conv",
        }
    }

    /// Parses [`Correlation::name`]'s names.
    pub fn from_name(name: &str) -> Option<Self> {
        [Correlation::Attention, Correlation::Conv]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

/// What turns the decoder's final `g x g x d` map into logit maps before the bilinear
/// upsampling to `m x m` (S4 and its Figure 4 option).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Predictor {
    /// The release's 1x1 conv (d -> C, bias) on the g x g map.
    #[default]
    Conv1x1,
    /// A deconvolution: a transposed conv d -> C with bias, kernel
    /// [`Predictor::DECONV_KERNEL`] = 4, stride [`Predictor::DECONV_STRIDE`] = 2, padding
    /// [`Predictor::DECONV_PADDING`] = 1 (PyTorch's `ConvTranspose2d(d, C, 4, 2, 1)`),
    /// which doubles the map to `2g x 2g` before the upsampling. Kernel 4 with stride 2
    /// lets neighbouring windows overlap (kernel 2 would be a 1x1 conv to 4C channels and
    /// a pixel shuffle, no more expressive than the default); padding 1 makes the output
    /// exactly twice the input. Weight `[d, C, 4, 4]` as PyTorch stores it.
    Deconv,
}

impl Predictor {
    /// Kernel side of the deconvolution predictor.
    pub const DECONV_KERNEL: usize = 4;
    /// Stride of the deconvolution predictor.
    pub const DECONV_STRIDE: usize = 2;
    /// Padding of the deconvolution predictor.
    pub const DECONV_PADDING: usize = 1;

    /// The recipe and command-line name: `conv1x1` or `deconv`.
    pub fn name(self) -> &'static str {
        match self {
            Predictor::Conv1x1 => "conv1x1",
            Predictor::Deconv => "deconv",
        }
    }

    /// Parses [`Predictor::name`]'s names.
    pub fn from_name(name: &str) -> Option<Self> {
        [Predictor::Conv1x1, Predictor::Deconv]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// Kernel side of the predictor's weight (1 or [`Predictor::DECONV_KERNEL`]).
    pub fn kernel(self) -> usize {
        match self {
            Predictor::Conv1x1 => 1,
            Predictor::Deconv => Self::DECONV_KERNEL,
        }
    }

    /// Side of the logit planes the predictor makes from a `grid x grid` map, before the
    /// upsampling: `grid` for the 1x1 conv, `(grid - 1) 2 + 4 - 2 = 2 grid` for the
    /// deconvolution.
    pub fn out_side(self, grid: usize) -> usize {
        match self {
            Predictor::Conv1x1 => grid,
            Predictor::Deconv => (grid.saturating_sub(1) * Self::DECONV_STRIDE
                + Self::DECONV_KERNEL)
                .saturating_sub(2 * Self::DECONV_PADDING),
        }
    }
}

/// The correlation decoder (S4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Width d.
    pub width: usize,
    /// Cross blocks.
    pub depth: usize,
    /// Attention heads (unused by the conv correlation, still validated).
    pub heads: usize,
    /// How each block correlates context and exemplar (default: cross-attention).
    pub correlation: Correlation,
    /// The predictor before the upsampling (default: the 1x1 conv).
    pub predictor: Predictor,
    /// Multiplier of the predictor weight's S8 standard deviation: 1 is S8. Smaller values
    /// start the logits near zero instead of at std ~sqrt(d) (a recipe option; see S8).
    pub predictor_init_scale: f64,
}

/// One CIM model: encoder, decoder, crop sizes and loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// Encoder shared by the online and target networks.
    pub encoder: EncoderConfig,
    /// Correlation decoder.
    pub decoder: DecoderConfig,
    /// Context side m (S2, 160).
    pub context_size: usize,
    /// Exemplar side n (S2, 64).
    pub exemplar_size: usize,
    /// Exemplars per context K (S2, 6).
    pub exemplars: usize,
    /// Map loss (S5).
    pub loss: MapLoss,
}

/// A configuration that cannot be built, with the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A size that must be positive is zero.
    Zero(&'static str),
    /// `what` must be a multiple of `of`.
    NotMultiple {
        /// The size that must divide evenly.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The divisor it must be a multiple of.
        of: usize,
    },
    /// `what` must not exceed `limit`.
    TooLarge {
        /// The size that is too large.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The largest value allowed.
        limit: usize,
    },
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Zero(what) => write!(f, "model configuration: {what} must be positive"),
            ConfigError::NotMultiple { what, value, of } => write!(
                f,
                "model configuration: {what} = {value} must be a multiple of {of}"
            ),
            ConfigError::TooLarge { what, value, limit } => write!(
                f,
                "model configuration: {what} = {value} must not exceed {limit}"
            ),
        }
    }
}

impl EncoderConfig {
    fn vit(dim: usize, depth: usize, heads: usize, patch: usize) -> Self {
        EncoderConfig {
            dim,
            depth,
            heads,
            patch,
            mlp_ratio: 4,
            pos_embed_size: 224,
            frozen_patch_embed: true,
        }
    }
    /// ViT-Tiny/16: 192 wide, 12 blocks, 3 heads.
    pub fn tiny() -> Self {
        Self::vit(192, 12, 3, 16)
    }
    /// ViT-Small/16: 384, 12, 6.
    pub fn small() -> Self {
        Self::vit(384, 12, 6, 16)
    }
    /// ViT-Base/16: 768, 12, 12.
    pub fn base() -> Self {
        Self::vit(768, 12, 12, 16)
    }
    /// ViT-Large/16: 1024, 24, 16.
    pub fn large() -> Self {
        Self::vit(1024, 24, 16, 16)
    }
    /// ViT-Huge/14: 1280, 32, 16, patch 14.
    pub fn huge() -> Self {
        Self::vit(1280, 32, 16, 14)
    }
    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
    /// Side of the grid the fixed position embedding is built for (G0).
    pub fn pos_grid(&self) -> usize {
        self.pos_embed_size / self.patch
    }
}

impl DecoderConfig {
    /// The paper's decoder: one cross block, 512 wide, 16 heads.
    pub fn paper() -> Self {
        DecoderConfig {
            width: 512,
            depth: 1,
            heads: 16,
            correlation: Correlation::Attention,
            predictor: Predictor::Conv1x1,
            predictor_init_scale: 1.0,
        }
    }
    /// Channels per head.
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

impl ModelConfig {
    /// The S9 geometry (context 160, six exemplars of 64, softmax CE) around `encoder`.
    pub fn paper(encoder: EncoderConfig) -> Self {
        ModelConfig {
            encoder,
            decoder: DecoderConfig::paper(),
            context_size: 160,
            exemplar_size: 64,
            exemplars: 6,
            loss: MapLoss::SoftmaxCrossEntropy,
        }
    }

    /// A tiny model for tests: D 32, 2 blocks of 2 heads, patch 8, context 32 (4x4 grid),
    /// 2 exemplars of 16 (2x2 grid), decoder 24 wide with 2 heads. The patch embedding is
    /// trainable so its gradient path is exercised too.
    pub fn micro() -> Self {
        ModelConfig {
            encoder: EncoderConfig {
                dim: 32,
                depth: 2,
                heads: 2,
                patch: 8,
                mlp_ratio: 4,
                pos_embed_size: 48,
                frozen_patch_embed: false,
            },
            decoder: DecoderConfig {
                width: 24,
                depth: 1,
                heads: 2,
                correlation: Correlation::Attention,
                predictor: Predictor::Conv1x1,
                predictor_init_scale: 1.0,
            },
            context_size: 32,
            exemplar_size: 16,
            exemplars: 2,
            loss: MapLoss::SoftmaxCrossEntropy,
        }
    }

    /// A named preset: `micro`, `vit-tiny`, `vit-small`, `vit-base`, `vit-large`,
    /// `vit-huge` (the last five with the paper's decoder and geometry).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "micro" => Self::micro(),
            "vit-tiny" => Self::paper(EncoderConfig::tiny()),
            "vit-small" => Self::paper(EncoderConfig::small()),
            "vit-base" => Self::paper(EncoderConfig::base()),
            "vit-large" => Self::paper(EncoderConfig::large()),
            // Patch 14 does not divide 160 or 64: the nearest multiples that keep one
            // context plus six exemplars within a 224 image's 256 tokens are 168 and 56.
            "vit-huge" => ModelConfig {
                context_size: 168,
                exemplar_size: 56,
                ..Self::paper(EncoderConfig::huge())
            },
            _ => return None,
        })
    }

    /// Patch grid side of the context (g = m / p).
    pub fn context_grid(&self) -> usize {
        self.context_size / self.encoder.patch
    }

    /// Patch grid side of an exemplar (n / p).
    pub fn exemplar_grid(&self) -> usize {
        self.exemplar_size / self.encoder.patch
    }

    /// Checks every divisibility and positivity the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.encoder;
        let d = &self.decoder;
        for (what, v) in [
            ("encoder dim", e.dim),
            ("encoder depth", e.depth),
            ("encoder heads", e.heads),
            ("patch", e.patch),
            ("mlp ratio", e.mlp_ratio),
            ("decoder width", d.width),
            ("decoder depth", d.depth),
            ("decoder heads", d.heads),
            ("exemplars", self.exemplars),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(what));
            }
        }
        let multiples = [
            ("encoder dim", e.dim, e.heads),
            ("encoder dim", e.dim, 4),
            ("decoder width", d.width, d.heads),
            ("decoder width", d.width, 4),
            ("context size", self.context_size, e.patch),
            ("exemplar size", self.exemplar_size, e.patch),
            ("position-embedding size", e.pos_embed_size, e.patch),
        ];
        for (what, value, of) in multiples {
            if value % of != 0 {
                return Err(ConfigError::NotMultiple { what, value, of });
            }
        }
        for (what, v) in [
            ("context size", self.context_size),
            ("exemplar size", self.exemplar_size),
            ("position-embedding size", e.pos_embed_size),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(what));
            }
        }
        // SiamFC slides the exemplar inside the search region: a kernel wider than the
        // context map would have taps that only ever read the zero padding.
        if d.correlation == Correlation::Conv && self.exemplar_grid() > self.context_grid() {
            return Err(ConfigError::TooLarge {
                what: "exemplar grid (conv correlation)",
                value: self.exemplar_grid(),
                limit: self.context_grid(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_match_s3() {
        for name in [
            "micro",
            "vit-tiny",
            "vit-small",
            "vit-base",
            "vit-large",
            "vit-huge",
        ] {
            let c = ModelConfig::preset(name).unwrap();
            c.validate().unwrap();
        }
        let b = ModelConfig::preset("vit-base").unwrap();
        assert_eq!(
            (b.encoder.dim, b.encoder.depth, b.encoder.heads),
            (768, 12, 12)
        );
        assert_eq!(
            (b.context_grid(), b.exemplar_grid(), b.encoder.pos_grid()),
            (10, 4, 14)
        );
        // S9: one context plus six exemplars is the token budget of one 224 image.
        assert_eq!(b.context_grid().pow(2) + 6 * b.exemplar_grid().pow(2), 196);
        assert_eq!(ModelConfig::preset("vit-huge").unwrap().encoder.patch, 14);
        assert!(ModelConfig::preset("vit-gigantic").is_none());
    }

    #[test]
    fn invalid_configurations_name_the_problem() {
        let mut c = ModelConfig::micro();
        c.encoder.heads = 3;
        assert_eq!(
            c.validate(),
            Err(ConfigError::NotMultiple {
                what: "encoder dim",
                value: 32,
                of: 3
            })
        );
        let mut c = ModelConfig::micro();
        c.context_size = 30;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NotMultiple {
                what: "context size",
                ..
            })
        ));
        let mut c = ModelConfig::micro();
        c.decoder.depth = 0;
        assert_eq!(c.validate(), Err(ConfigError::Zero("decoder depth")));
        let mut c = ModelConfig::micro();
        c.decoder.correlation = Correlation::Conv;
        c.validate().unwrap();
        c.exemplar_size = 40;
        assert_eq!(
            c.validate(),
            Err(ConfigError::TooLarge {
                what: "exemplar grid (conv correlation)",
                value: 5,
                limit: 4
            })
        );
    }

    #[test]
    fn decoder_options_default_to_the_paper_and_round_trip_their_names() {
        let d = DecoderConfig::paper();
        assert_eq!(
            (d.correlation, d.predictor),
            (Correlation::default(), Predictor::default())
        );
        assert_eq!(
            (d.correlation, d.predictor),
            (Correlation::Attention, Predictor::Conv1x1)
        );
        for c in [Correlation::Attention, Correlation::Conv] {
            assert_eq!(Correlation::from_name(c.name()), Some(c));
        }
        for p in [Predictor::Conv1x1, Predictor::Deconv] {
            assert_eq!(Predictor::from_name(p.name()), Some(p));
        }
        assert_eq!(Correlation::from_name("xcorr"), None);
        assert_eq!(Predictor::from_name("conv"), None);
        // The deconvolution doubles the map: 10 -> 20 at the paper's context grid.
        assert_eq!(Predictor::Deconv.out_side(10), 20);
        assert_eq!(Predictor::Deconv.out_side(1), 2);
        assert_eq!(Predictor::Conv1x1.out_side(10), 10);
    }
}
