//! `tidal-model generate`: a deterministic model of about N parameters.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::safetensors::encode_header;

pub const INPUT: usize = 16;
pub const OUTPUT: usize = 4;

/// The shape `generate` picks for about `params` parameters:
/// input 16, output 4, hidden = max(1, (params − 4) / 21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelConfig {
    pub input: usize,
    pub hidden: usize,
    pub output: usize,
    /// The actual parameter count: `hidden × (input + 1 + output) + output`.
    pub params: usize,
}

impl ModelConfig {
    pub fn for_params(params: u64) -> Self {
        let per_hidden = (INPUT + 1 + OUTPUT) as u64;
        let hidden = (params.saturating_sub(OUTPUT as u64) / per_hidden).max(1);
        let hidden = usize::try_from(hidden).unwrap_or(usize::MAX / (INPUT + 1 + OUTPUT) - 1);
        Self {
            input: INPUT,
            hidden,
            output: OUTPUT,
            params: hidden * (INPUT + 1 + OUTPUT) + OUTPUT,
        }
    }
}

/// What `generate` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub config: ModelConfig,
    pub model: PathBuf,
    pub bytes: u64,
}

/// xorshift64* seeded through splitmix64, so seed 0 works too.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        let bits = u32::try_from(self.next_u64() >> 40).unwrap_or(0); // 24 bits
        (bits as f32 / (1u32 << 23) as f32) - 1.0
    }
}

/// Writes `dir/model.safetensors` (via a temporary file and rename) and
/// `dir/config.json`. Same `params` and `seed` → identical bytes.
pub fn generate(dir: &Path, params: u64, seed: u64) -> std::io::Result<Generated> {
    let config = ModelConfig::for_params(params);
    let ModelConfig {
        input,
        hidden,
        output,
        ..
    } = config;
    std::fs::create_dir_all(dir)?;
    let model = dir.join("model.safetensors");
    let tmp = dir.join("model.safetensors.tmp");
    let seed_text = seed.to_string();
    let header = encode_header(
        &[
            ("layer0.weight", &[hidden, input]),
            ("layer0.bias", &[hidden]),
            ("layer1.weight", &[output, hidden]),
            ("layer1.bias", &[output]),
        ],
        &[("generator", "tidal-model"), ("seed", &seed_text)],
    );
    let mut rng = XorShift::new(seed);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    out.write_all(&header)?;
    // Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), as nn.Linear initialises.
    let scale0 = 1.0 / (input as f32).sqrt();
    let scale1 = 1.0 / (hidden as f32).sqrt();
    for (count, scale) in [
        (hidden * input, scale0),
        (hidden, scale0),
        (output * hidden, scale1),
        (output, scale1),
    ] {
        for _ in 0..count {
            out.write_all(&(rng.next_f32() * scale).to_le_bytes())?;
        }
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let bytes = file.metadata()?.len();
    drop(file);
    std::fs::rename(&tmp, &model)?;
    let mut json = serde_json::to_string_pretty(&config).map_err(std::io::Error::other)?;
    json.push('\n');
    std::fs::write(dir.join("config.json"), json)?;
    Ok(Generated {
        config,
        model,
        bytes,
    })
}
