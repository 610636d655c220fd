//! candle-transformers' stock Whisper, the independent reference our encoder
//! ([`crate::whisper::WhisperEncoder`]) is checked (tests/ct2_whisper.rs) and benchmarked
//! (`earguard bench audio`) against. Not part of the runtime: compiled only with the
//! `stock-whisper` feature, which those two users turn on.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// candle-transformers' stock Whisper, the reference our encoder is checked and benchmarked
/// against, built from HF-named encoder tensors (`model.encoder.*`, as `convert ct2-whisper`
/// writes them). The stock loader also builds a decoder, which neither use: its tensors are
/// zeros of the shapes it asks for.
pub fn candle_stock_whisper(
    tensors: std::collections::HashMap<String, Tensor>,
    cfg: candle_transformers::models::whisper::Config,
) -> Result<candle_transformers::models::whisper::model::Whisper> {
    let vb = candle_nn::VarBuilder::from_backend(
        Box::new(EncoderOnly(tensors)),
        DType::F32,
        Device::Cpu,
    );
    Ok(candle_transformers::models::whisper::model::Whisper::load(
        &vb, cfg,
    )?)
}

/// Serves encoder tensors; anything under `model.decoder.` is zeros.
struct EncoderOnly(std::collections::HashMap<String, Tensor>);

impl candle_nn::var_builder::SimpleBackend for EncoderOnly {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.0.get(name) {
            Some(t) if t.shape() == &s => t.to_dtype(dtype)?.to_device(dev),
            Some(t) => candle_core::bail!("{name}: shape {:?}, candle wants {s:?}", t.shape()),
            None if name.starts_with("model.decoder.") => Tensor::zeros(s, dtype, dev),
            None => candle_core::bail!("{name} is missing from the converted checkpoint"),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.0.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("{name} is missing"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}
