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

/// The correlation decoder (S4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Width d.
    pub width: usize,
    /// Cross blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
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
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Zero(what) => write!(f, "model configuration: {what} must be positive"),
            ConfigError::NotMultiple { what, value, of } => write!(
                f,
                "model configuration: {what} = {value} must be a multiple of {of}"
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
    }
}
