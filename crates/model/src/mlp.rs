//! The two-layer perceptron the replica serves: `layer1(relu(layer0(x)))`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::LoadError;
use crate::safetensors::{self, Tensor};

/// Weights of `layer1(relu(layer0(x)))`, row-major as in PyTorch's `nn.Linear`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    input: usize,
    hidden: usize,
    output: usize,
    w0: Vec<f32>,
    b0: Vec<f32>,
    w1: Vec<f32>,
    b1: Vec<f32>,
}

impl Mlp {
    /// Loads `layer0.weight` [hidden, input], `layer0.bias` [hidden],
    /// `layer1.weight` [output, hidden] and `layer1.bias` [output] from `path`.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::from_tensors(path, safetensors::load(path)?)
    }

    /// Builds the model from loaded tensors; `path` is only for errors.
    pub fn from_tensors(
        path: &Path,
        mut tensors: BTreeMap<String, Tensor>,
    ) -> Result<Self, LoadError> {
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .ok_or_else(|| LoadError::MissingTensor {
                    path: path.to_owned(),
                    name: name.to_owned(),
                })
        };
        let (w0, b0, w1, b1) = (
            take("layer0.weight")?,
            take("layer0.bias")?,
            take("layer1.weight")?,
            take("layer1.bias")?,
        );
        let mismatch = |name: &str, got: &Tensor, expected: String| LoadError::ShapeMismatch {
            path: path.to_owned(),
            name: name.to_owned(),
            got: got.shape.clone(),
            expected,
        };
        let (hidden, input) = match w0.shape[..] {
            [h, i] if h > 0 && i > 0 => (h, i),
            _ => {
                let e = "[hidden, input], both ≥ 1".to_owned();
                return Err(mismatch("layer0.weight", &w0, e));
            }
        };
        if b0.shape != [hidden] {
            return Err(mismatch("layer0.bias", &b0, format!("[{hidden}] (hidden)")));
        }
        let output = match w1.shape[..] {
            [o, h] if o > 0 && h == hidden => o,
            _ => {
                let e = format!("[output, {hidden}] with output ≥ 1");
                return Err(mismatch("layer1.weight", &w1, e));
            }
        };
        if b1.shape != [output] {
            return Err(mismatch("layer1.bias", &b1, format!("[{output}] (output)")));
        }
        Ok(Self {
            input,
            hidden,
            output,
            w0: w0.data,
            b0: b0.data,
            w1: w1.data,
            b1: b1.data,
        })
    }

    pub fn input_len(&self) -> usize {
        self.input
    }

    pub fn hidden_len(&self) -> usize {
        self.hidden
    }

    pub fn output_len(&self) -> usize {
        self.output
    }

    /// Total number of parameters.
    pub fn params(&self) -> usize {
        self.w0.len() + self.b0.len() + self.w1.len() + self.b1.len()
    }

    /// `layer1(relu(layer0(input)))`.
    ///
    /// # Panics
    /// If `input.len() != self.input_len()`; callers check first.
    pub fn predict(&self, input: &[f32]) -> Vec<f32> {
        assert_eq!(input.len(), self.input, "input length");
        let hidden: Vec<f32> = self
            .w0
            .chunks_exact(self.input)
            .zip(&self.b0)
            .map(|(row, b)| (dot(row, input) + b).max(0.0))
            .collect();
        self.w1
            .chunks_exact(self.hidden)
            .zip(&self.b1)
            .map(|(row, b)| dot(row, &hidden) + b)
            .collect()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
