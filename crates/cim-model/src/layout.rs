//! Where every parameter lives: names (S12), shapes, offsets, optimizer groups, initialisers.
//!
//! All trainable tensors of the online network, the class token and the decoder share one
//! buffer, ordered so that each optimizer group and the EMA'd encoder are contiguous
//! ranges (one AdamW call per group, one EMA call per step, whatever the depth):
//!
//! ```text
//! [decoder no-decay | encoder no-decay | patch bias | patch weight | encoder decayed | cls | decoder decayed]
//!  '---------------- no decay (S6) --------------'   '-------------- decayed (S6) ----------------'
//!                    '----------------- EMA'd encoder (S7) -----------------'
//! ```
//! The patch embedding sits in the middle so that, when it is frozen (the S3 default), it
//! drops out of both optimizer ranges and stays inside the EMA range. The target encoder
//! is a second buffer holding a copy of the EMA range with the same relative offsets.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use cim_spec::config::{Correlation, ModelConfig, Predictor};
use cim_spec::init::{self, Init};

/// One named tensor of the parameter buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// The S12 (public release) state-dict name of the online tensor.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements in the parameter buffer.
    pub range: Range<usize>,
    /// How S8 initialises it.
    pub init: Init,
    /// Whether AdamW updates it.
    pub trainable: bool,
}

/// Ranges of one transformer block's tensors (encoder self-attention or decoder cross).
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub struct BlockParams {
    pub norm1_w: Range<usize>,
    pub norm1_b: Range<usize>,
    /// Encoder: fused `qkv` `[3D, D]`; decoder: `q` `[d, d]` (empty with the conv
    /// correlation, which has no projections before it).
    pub q_w: Range<usize>,
    pub q_b: Range<usize>,
    /// Decoder only: fused `kv` `[2d, d]` (empty in the encoder and with the conv
    /// correlation).
    pub kv_w: Range<usize>,
    pub kv_b: Range<usize>,
    pub proj_w: Range<usize>,
    pub proj_b: Range<usize>,
    pub norm2_w: Range<usize>,
    pub norm2_b: Range<usize>,
    pub fc1_w: Range<usize>,
    pub fc1_b: Range<usize>,
    pub fc2_w: Range<usize>,
    pub fc2_b: Range<usize>,
}

impl BlockParams {
    /// Every tensor range of the block, in field order (the absent projections of the
    /// encoder and of the conv correlation are empty ranges).
    pub fn ranges(&self) -> [&Range<usize>; 14] {
        [
            &self.norm1_w,
            &self.norm1_b,
            &self.q_w,
            &self.q_b,
            &self.kv_w,
            &self.kv_b,
            &self.proj_w,
            &self.proj_b,
            &self.norm2_w,
            &self.norm2_b,
            &self.fc1_w,
            &self.fc1_b,
            &self.fc2_w,
            &self.fc2_b,
        ]
    }
}

/// Ranges of the encoder's tensors.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub struct EncoderParams {
    pub patch_w: Range<usize>,
    pub patch_b: Range<usize>,
    pub blocks: Vec<BlockParams>,
    pub norm_w: Range<usize>,
    pub norm_b: Range<usize>,
}

/// Ranges of the decoder's tensors.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub struct DecoderParams {
    pub embed_w: Range<usize>,
    pub embed_b: Range<usize>,
    pub blocks: Vec<BlockParams>,
    pub norm_w: Range<usize>,
    pub norm_b: Range<usize>,
    pub pred_w: Range<usize>,
    pub pred_b: Range<usize>,
}

impl EncoderParams {
    /// The patch embedding's weight and bias.
    pub fn patch(&self) -> [&Range<usize>; 2] {
        [&self.patch_w, &self.patch_b]
    }

    /// The final LayerNorm's weight and bias.
    pub fn norm(&self) -> [&Range<usize>; 2] {
        [&self.norm_w, &self.norm_b]
    }
}

impl DecoderParams {
    /// The shared embedding E's weight and bias.
    pub fn embed(&self) -> [&Range<usize>; 2] {
        [&self.embed_w, &self.embed_b]
    }

    /// The predictor's weight and bias.
    pub fn predictor(&self) -> [&Range<usize>; 2] {
        [&self.pred_w, &self.pred_b]
    }

    /// The final LayerNorm's weight and bias.
    pub fn norm(&self) -> [&Range<usize>; 2] {
        [&self.norm_w, &self.norm_b]
    }
}

/// The whole parameter layout.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    /// Every tensor, in buffer order.
    pub tensors: Vec<TensorSpec>,
    /// Encoder ranges (absolute offsets in the parameter buffer).
    pub encoder: EncoderParams,
    /// The class token `[1, 1, D]`.
    pub cls: Range<usize>,
    /// Decoder ranges.
    pub decoder: DecoderParams,
    /// Trainable tensors without weight decay (S6).
    pub no_decay: Range<usize>,
    /// Trainable tensors with weight decay (S6).
    pub decay: Range<usize>,
    /// The encoder, copied by the target network and updated by EMA (S7).
    pub ema: Range<usize>,
    /// Elements in the buffer.
    pub total: usize,
}

/// Elements every tensor's offset is a multiple of: 16 bytes of f32, the alignment GPU
/// kernels load vectors at (cuBLASLt's bias epilogue among them, which cannot be told a
/// smaller one). Small tensors (the predictor's 1-2 biases, LayerNorm vectors of odd
/// widths) would otherwise shift everything after them.
pub const TENSOR_ALIGN: usize = 4;

/// Which S6 group and stream a tensor belongs to while the layout is built.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    DecoderNoDecay,
    EncoderNoDecay,
    PatchBias,
    PatchWeight,
    EncoderDecay,
    Cls,
    DecoderDecay,
}

const SLOTS: [Slot; 7] = [
    Slot::DecoderNoDecay,
    Slot::EncoderNoDecay,
    Slot::PatchBias,
    Slot::PatchWeight,
    Slot::EncoderDecay,
    Slot::Cls,
    Slot::DecoderDecay,
];

struct Pending {
    name: String,
    shape: Vec<usize>,
    init: Init,
    slot: Slot,
}

/// Collects tensors, then assigns offsets slot by slot.
struct Builder {
    pending: Vec<Pending>,
}

impl Builder {
    /// Registers a tensor and returns its index; its range is known after `finish`.
    fn add(&mut self, name: String, shape: &[usize], init: Init, slot: Slot) -> usize {
        self.pending.push(Pending {
            name,
            shape: shape.to_vec(),
            init,
            slot,
        });
        self.pending.len() - 1
    }
}

fn xavier() -> Init {
    Init::XavierUniform
}

impl ParamLayout {
    /// The layout of `config` (which must be valid).
    pub fn new(config: &ModelConfig) -> Self {
        let e = &config.encoder;
        let dd = &config.decoder;
        let (dim, hid, p) = (e.dim, e.dim * e.mlp_ratio, e.patch);
        let (w, dhid) = (dd.width, dd.width * e.mlp_ratio);
        let channels = config.loss.channels();
        let mut b = Builder {
            pending: Vec::new(),
        };
        let frozen = e.frozen_patch_embed;
        let bound = init::patch_embed_bound(p, dim);
        let patch_w = b.add(
            "patch_embed.proj.weight".into(),
            &[dim, 3, p, p],
            Init::Uniform { bound },
            Slot::PatchWeight,
        );
        let patch_b = b.add(
            "patch_embed.proj.bias".into(),
            &[dim],
            Init::Zeros,
            Slot::PatchBias,
        );
        let mut block_ids = Vec::new();
        for i in 0..e.depth {
            let n = |s: &str| format!("blocks.{i}.{s}");
            let nd = Slot::EncoderNoDecay;
            let de = Slot::EncoderDecay;
            block_ids.push([
                b.add(n("norm1.weight"), &[dim], Init::Ones, nd),
                b.add(n("norm1.bias"), &[dim], Init::Zeros, nd),
                b.add(n("attn.qkv.weight"), &[3 * dim, dim], xavier(), de),
                b.add(n("attn.qkv.bias"), &[3 * dim], Init::Zeros, nd),
                usize::MAX,
                usize::MAX,
                b.add(n("attn.proj.weight"), &[dim, dim], xavier(), de),
                b.add(n("attn.proj.bias"), &[dim], Init::Zeros, nd),
                b.add(n("norm2.weight"), &[dim], Init::Ones, nd),
                b.add(n("norm2.bias"), &[dim], Init::Zeros, nd),
                b.add(n("mlp.fc1.weight"), &[hid, dim], xavier(), de),
                b.add(n("mlp.fc1.bias"), &[hid], Init::Zeros, nd),
                b.add(n("mlp.fc2.weight"), &[dim, hid], xavier(), de),
                b.add(n("mlp.fc2.bias"), &[dim], Init::Zeros, nd),
            ]);
        }
        let norm_w = b.add(
            "norm.weight".into(),
            &[dim],
            Init::Ones,
            Slot::EncoderNoDecay,
        );
        let norm_b = b.add(
            "norm.bias".into(),
            &[dim],
            Init::Zeros,
            Slot::EncoderNoDecay,
        );
        let cls = b.add(
            "cls_token".into(),
            &[1, 1, dim],
            Init::Normal { std: 0.02 },
            Slot::Cls,
        );
        let dn = Slot::DecoderNoDecay;
        let dde = Slot::DecoderDecay;
        let embed_w = b.add("decoder_embed.weight".into(), &[w, dim], xavier(), dde);
        let embed_b = b.add("decoder_embed.bias".into(), &[w], Init::Zeros, dn);
        let mut dec_ids = Vec::new();
        for i in 0..dd.depth {
            // The release names its single block `decoder_corr_block.block`; deeper decoders
            // (Figure 4 ablation) number further blocks `decoder_corr_block.block{i}`.
            let prefix = if i == 0 {
                String::from("decoder_corr_block.block")
            } else {
                format!("decoder_corr_block.block{i}")
            };
            let n = |s: &str| format!("{prefix}.{s}");
            // Registered in the release's module order (offsets and init streams follow
            // registration order).
            let norm1 = [
                b.add(n("norm1.weight"), &[w], Init::Ones, dn),
                b.add(n("norm1.bias"), &[w], Init::Zeros, dn),
            ];
            // The conv correlation (S4 option) has no q and kv projections: the
            // correlation itself is parameter-free, only its output projection remains,
            // named after the module that holds it (`corr` in place of `attn`).
            let mixer = match dd.correlation {
                Correlation::Attention => [
                    b.add(n("attn.q.weight"), &[w, w], xavier(), dde),
                    b.add(n("attn.q.bias"), &[w], Init::Zeros, dn),
                    b.add(n("attn.kv.weight"), &[2 * w, w], xavier(), dde),
                    b.add(n("attn.kv.bias"), &[2 * w], Init::Zeros, dn),
                    b.add(n("attn.proj.weight"), &[w, w], xavier(), dde),
                    b.add(n("attn.proj.bias"), &[w], Init::Zeros, dn),
                ],
                Correlation::Conv => [
                    usize::MAX,
                    usize::MAX,
                    usize::MAX,
                    usize::MAX,
                    b.add(n("corr.proj.weight"), &[w, w], xavier(), dde),
                    b.add(n("corr.proj.bias"), &[w], Init::Zeros, dn),
                ],
            };
            dec_ids.push([
                norm1[0],
                norm1[1],
                mixer[0],
                mixer[1],
                mixer[2],
                mixer[3],
                mixer[4],
                mixer[5],
                b.add(n("norm2.weight"), &[w], Init::Ones, dn),
                b.add(n("norm2.bias"), &[w], Init::Zeros, dn),
                b.add(n("mlp.fc1.weight"), &[dhid, w], xavier(), dde),
                b.add(n("mlp.fc1.bias"), &[dhid], Init::Zeros, dn),
                b.add(n("mlp.fc2.weight"), &[w, dhid], xavier(), dde),
                b.add(n("mlp.fc2.bias"), &[w], Init::Zeros, dn),
            ]);
        }
        let dnorm_w = b.add("decoder_norm.weight".into(), &[w], Init::Ones, dn);
        let dnorm_b = b.add("decoder_norm.bias".into(), &[w], Init::Zeros, dn);
        // S8 for the predictor: the release's conv rule, weight N(0, sqrt(2 / (k k C)))
        // (He over the fan-out, k the kernel side), which S8 states with k explicit; the
        // bias as PyTorch initialises the layer it is, U(+-1/sqrt(fan_in)) with the fan-in
        // PyTorch computes from the stored weight: d for the 1x1 Conv2d ([C, d, 1, 1]),
        // C k k for ConvTranspose2d ([d, C, k, k], dimension 1 is its output channels).
        let k = dd.predictor.kernel();
        let (pred_shape, bias_fan_in) = match dd.predictor {
            Predictor::Conv1x1 => ([channels, w, 1, 1], w),
            Predictor::Deconv => ([w, channels, k, k], channels * k * k),
        };
        let pred_w = b.add(
            "decoder_pred_mask.0.weight".into(),
            &pred_shape,
            Init::Normal {
                std: init::predictor_conv_std(k, channels) * dd.predictor_init_scale,
            },
            dde,
        );
        let pred_b = b.add(
            "decoder_pred_mask.0.bias".into(),
            &[channels],
            Init::Uniform {
                bound: init::predictor_bias_bound(bias_fan_in),
            },
            dn,
        );

        // Offsets: slot by slot, registration order within a slot, every tensor starting
        // on a multiple of TENSOR_ALIGN elements (the gaps stay zero: no gradient, no
        // update, no decay of a zero).
        let mut ranges = vec![0..0; b.pending.len()];
        let mut slot_ranges = [0..0, 0..0, 0..0, 0..0, 0..0, 0..0, 0..0];
        let mut off = 0usize;
        let mut tensors = Vec::new();
        for (si, slot) in SLOTS.iter().enumerate() {
            off = off.next_multiple_of(TENSOR_ALIGN);
            let start = off;
            for (i, t) in b
                .pending
                .iter()
                .enumerate()
                .filter(|(_, t)| t.slot == *slot)
            {
                let len: usize = t.shape.iter().product();
                off = off.next_multiple_of(TENSOR_ALIGN);
                ranges[i] = off..off + len;
                let patch = matches!(t.slot, Slot::PatchBias | Slot::PatchWeight);
                tensors.push(TensorSpec {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    range: off..off + len,
                    init: t.init,
                    trainable: !(patch && frozen),
                });
                off += len;
            }
            slot_ranges[si] = start..off;
        }
        let r = |i: usize| ranges[i].clone();
        let empty = |i: usize| if i == usize::MAX { 0..0 } else { r(i) };
        let block = |ids: &[usize; 14]| BlockParams {
            norm1_w: r(ids[0]),
            norm1_b: r(ids[1]),
            q_w: empty(ids[2]),
            q_b: empty(ids[3]),
            kv_w: empty(ids[4]),
            kv_b: empty(ids[5]),
            proj_w: r(ids[6]),
            proj_b: r(ids[7]),
            norm2_w: r(ids[8]),
            norm2_b: r(ids[9]),
            fc1_w: r(ids[10]),
            fc1_b: r(ids[11]),
            fc2_w: r(ids[12]),
            fc2_b: r(ids[13]),
        };
        let [dec_nd, enc_nd, pbias, pweight, enc_de, cls_r, dec_de] = slot_ranges;
        let (no_decay, decay) = if frozen {
            (dec_nd.start..enc_nd.end, enc_de.start..dec_de.end)
        } else {
            (dec_nd.start..pbias.end, pweight.start..dec_de.end)
        };
        debug_assert_eq!(cls_r, r(cls));
        ParamLayout {
            tensors,
            encoder: EncoderParams {
                patch_w: r(patch_w),
                patch_b: r(patch_b),
                blocks: block_ids.iter().map(block).collect(),
                norm_w: r(norm_w),
                norm_b: r(norm_b),
            },
            cls: r(cls),
            decoder: DecoderParams {
                embed_w: r(embed_w),
                embed_b: r(embed_b),
                blocks: dec_ids.iter().map(block).collect(),
                norm_w: r(dnorm_w),
                norm_b: r(dnorm_b),
                pred_w: r(pred_w),
                pred_b: r(pred_b),
            },
            no_decay,
            decay,
            ema: enc_nd.start..enc_de.end,
            total: off,
        }
    }

    /// The trainable tensors' ranges in the order the backward pass finishes their
    /// gradients, which is the order [`crate::Cim::forward_backward_reporting`] reports
    /// them in: the decoder's predictor and final norm, its blocks from last to first and
    /// its embedding, then the encoder's final norm, its blocks from last to first, the
    /// class token and the patch embedding (S3: absent when frozen). A data-parallel
    /// trainer groups its all-reduce buckets in this order (as PyTorch DDP does), so the
    /// first bucket can be summed while the backward is still in the encoder.
    pub fn completion_order(&self) -> Vec<Range<usize>> {
        let (d, e) = (&self.decoder, &self.encoder);
        let mut order: Vec<&Range<usize>> = d.predictor().to_vec();
        order.extend(d.norm());
        order.extend(d.blocks.iter().rev().flat_map(BlockParams::ranges));
        order.extend(d.embed());
        order.extend(e.norm());
        order.extend(e.blocks.iter().rev().flat_map(BlockParams::ranges));
        order.push(&self.cls);
        order.extend(e.patch());
        order
            .into_iter()
            .filter(|r| {
                let spec = self.tensors.iter().find(|t| t.range == **r);
                !r.is_empty() && spec.is_some_and(|t| t.trainable)
            })
            .cloned()
            .collect()
    }

    /// The tensor called `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The target encoder's name of an online encoder tensor (S12): `patch_embed` becomes
    /// `patch_embed_c`, `blocks` `blocks_c`, `norm` `norm_c`; `None` outside the encoder.
    pub fn target_name(name: &str) -> Option<String> {
        for (online, target) in [
            ("patch_embed.", "patch_embed_c."),
            ("blocks.", "blocks_c."),
            ("norm.", "norm_c."),
        ] {
            if let Some(rest) = name.strip_prefix(online) {
                return Some(format!("{target}{rest}"));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_spec::schedule;

    #[test]
    fn groups_follow_s6_and_ranges_are_contiguous() {
        let options = [
            (true, Correlation::Attention, Predictor::Conv1x1),
            (false, Correlation::Attention, Predictor::Conv1x1),
            (true, Correlation::Conv, Predictor::Deconv),
            (false, Correlation::Conv, Predictor::Conv1x1),
        ];
        for (frozen, correlation, predictor) in options {
            let mut c = ModelConfig::micro();
            c.encoder.frozen_patch_embed = frozen;
            c.decoder.correlation = correlation;
            c.decoder.predictor = predictor;
            let l = ParamLayout::new(&c);
            let mut next = 0usize;
            for t in &l.tensors {
                assert_eq!(
                    t.range.start,
                    next.next_multiple_of(TENSOR_ALIGN),
                    "{} does not follow the previous tensor at the next aligned offset",
                    t.name
                );
                next = t.range.end;
                let in_decay = l.decay.contains(&t.range.start);
                let in_no_decay = l.no_decay.contains(&t.range.start);
                if t.trainable {
                    assert_eq!(
                        in_decay,
                        schedule::is_decayed(&t.shape, &t.name),
                        "{}",
                        t.name
                    );
                    assert_eq!(in_no_decay, !in_decay, "{}", t.name);
                } else {
                    assert!(!in_decay && !in_no_decay, "frozen {} is optimised", t.name);
                }
                let encoder = LayoutNames::is_encoder(&t.name);
                assert_eq!(l.ema.contains(&t.range.start), encoder, "{}", t.name);
            }
            assert_eq!(next, l.total);
            assert!(l.no_decay.end <= l.decay.start);
        }
    }

    struct LayoutNames;
    impl LayoutNames {
        fn is_encoder(name: &str) -> bool {
            ParamLayout::target_name(name).is_some()
        }
    }

    #[test]
    fn names_and_shapes_are_the_releases() {
        let l = ParamLayout::new(&ModelConfig::preset("vit-base").unwrap());
        let shape = |n: &str| l.tensor(n).unwrap().shape.clone();
        assert_eq!(shape("cls_token"), [1, 1, 768]);
        assert_eq!(shape("patch_embed.proj.weight"), [768, 3, 16, 16]);
        assert_eq!(shape("blocks.11.attn.qkv.weight"), [2304, 768]);
        assert_eq!(shape("blocks.0.mlp.fc2.weight"), [768, 3072]);
        assert_eq!(shape("decoder_embed.weight"), [512, 768]);
        assert_eq!(
            shape("decoder_corr_block.block.attn.kv.weight"),
            [1024, 512]
        );
        assert_eq!(shape("decoder_pred_mask.0.weight"), [2, 512, 1, 1]);
        assert_eq!(
            ParamLayout::target_name("blocks.3.norm1.weight").as_deref(),
            Some("blocks_c.3.norm1.weight")
        );
        assert_eq!(ParamLayout::target_name("decoder_norm.weight"), None);
        // timm's ViT-B/16 has 86,567,656 parameters; less the 1000-class head (769,000)
        // and the fixed position embedding (197 x 768) that leaves 85,647,360.
        let enc: usize = l.ema.len() + l.cls.len();
        assert_eq!(enc, 86_567_656 - 769_000 - 197 * 768);
    }

    #[test]
    fn decoder_options_have_their_own_tensors() {
        let mut c = ModelConfig::preset("vit-base").unwrap();
        let default = ParamLayout::new(&c);
        c.decoder.correlation = Correlation::Conv;
        c.decoder.predictor = Predictor::Deconv;
        let l = ParamLayout::new(&c);
        let spec = |n: &str| l.tensor(n).unwrap().clone();
        // PyTorch's ConvTranspose2d(512, 2, 4, 2, 1) stores [in, out, k, k].
        let w = spec("decoder_pred_mask.0.weight");
        assert_eq!(w.shape, [512, 2, 4, 4]);
        assert_eq!(w.init, Init::Normal { std: 0.25 });
        let b = spec("decoder_pred_mask.0.bias");
        assert_eq!(b.shape, [2]);
        assert_eq!(
            b.init,
            Init::Uniform {
                bound: 1.0 / 32f64.sqrt()
            }
        );
        assert_eq!(
            spec("decoder_corr_block.block.corr.proj.weight").shape,
            [512, 512]
        );
        for gone in ["attn.q.weight", "attn.kv.bias", "attn.proj.weight"] {
            let name = format!("decoder_corr_block.block.{gone}");
            assert!(l.tensor(&name).is_none(), "{name}");
        }
        let blk = &l.decoder.blocks[0];
        assert!(blk.q_w.is_empty() && blk.kv_w.is_empty() && !blk.proj_w.is_empty());
        // The encoder is untouched by the decoder options (its offsets move with the
        // decoder's no-decay slot in front of it, its size does not).
        assert_eq!(l.ema.len(), default.ema.len());
        // The default keeps the 1x1 conv's S8 initialisation.
        let w = default.tensor("decoder_pred_mask.0.weight").unwrap();
        assert_eq!(w.init, Init::Normal { std: 1.0 });
        // The recipe's init scale multiplies that std and nothing else.
        let mut scaled = ModelConfig::preset("vit-base").unwrap();
        scaled.decoder.predictor_init_scale = 0.02;
        let s = ParamLayout::new(&scaled);
        let w = s.tensor("decoder_pred_mask.0.weight").unwrap();
        assert_eq!(w.init, Init::Normal { std: 0.02 });
        for (a, b) in s.tensors.iter().zip(&default.tensors) {
            if a.name != "decoder_pred_mask.0.weight" {
                assert_eq!(a.init, b.init, "{}", a.name);
            }
        }
    }
}
