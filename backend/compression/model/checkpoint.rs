//! Checkpoints: the topology a network records as safetensors metadata (so a pruned network
//! loads without knowing its widths), writing and reading safetensors files and bytes, and
//! loading PyTorch-named weights into a constructed topology.

use super::*;

impl Network {
    // ----- safetensors --------------------------------------------------------------------

    /// The topology (layer kinds, names, strides, paddings) without widths or weights.
    pub fn topology(&self) -> Topology {
        Topology {
            architecture: self.architecture.clone(),
            input_size: self.input_size,
            layers: self.layers.iter().map(LayerSpec::of).collect(),
        }
    }

    /// Writes all tensors with PyTorch names (plus `num_batches_tracked` for each batch
    /// norm, as PyTorch expects) and the topology as metadata.
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_safetensors_bytes()?;
        std::fs::write(path, bytes).map_err(|e| CompressionError::io(path, e))
    }

    /// The bytes [`Network::save_safetensors`] writes (for storing a network in a database).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut buffers: BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> =
            BTreeMap::new();
        for (name, tensor) in self.named_tensors() {
            let values = tensor.flatten_all()?.to_vec1::<f32>()?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            buffers.insert(
                name,
                (safetensors::Dtype::F32, tensor.dims().to_vec(), bytes),
            );
        }
        for unit in self.units() {
            if let UnitRef::Bn(b) = unit {
                buffers.insert(
                    format!("{}.num_batches_tracked", b.name),
                    (
                        safetensors::Dtype::I64,
                        Vec::new(),
                        0i64.to_le_bytes().to_vec(),
                    ),
                );
            }
        }
        let mut views = Vec::with_capacity(buffers.len());
        for (name, (dtype, shape, bytes)) in &buffers {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map_err(|e| CompressionError::Checkpoint(format!("{name}: {e}")))?;
            views.push((name.clone(), view));
        }
        let topology = serde_json::to_string(&self.topology())
            .map_err(|e| CompressionError::Checkpoint(e.to_string()))?;
        let metadata = HashMap::from([
            (TOPOLOGY_METADATA_KEY.to_string(), topology),
            ("format".to_string(), "pt".to_string()),
        ]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| CompressionError::Checkpoint(e.to_string()))?;
        sorted_header(bytes)
    }

    /// Loads a network saved by [`Network::save_safetensors`] (topology from metadata,
    /// widths from the tensors, so pruned networks load as they are).
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Network> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| CompressionError::io(path, e))?;
        Network::from_safetensors_bytes(&bytes, path)
    }

    /// [`Network::load_safetensors`] from bytes; `origin` names them in errors.
    pub fn from_safetensors_bytes(bytes: &[u8], origin: &Path) -> Result<Network> {
        let path = origin;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| CompressionError::Checkpoint(format!("{}: {e}", path.display())))?;
        let topology = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(TOPOLOGY_METADATA_KEY))
            .ok_or_else(|| {
                CompressionError::Checkpoint(format!(
                    "{} has no '{TOPOLOGY_METADATA_KEY}' metadata; load it into a constructed \
                     network with Network::with_weights_from (CLI and form: --model ARCH=PATH)",
                    path.display()
                ))
            })?;
        let topology: Topology = serde_json::from_str(topology).map_err(|e| {
            CompressionError::Checkpoint(format!("{}: bad topology metadata: {e}", path.display()))
        })?;
        let tensors = read_tensors(path, bytes)?;
        Network::from_topology(&topology, &tensors)
    }

    /// Loads a PyTorch-named safetensors checkpoint into this network's topology. Widths
    /// come from the file (a pruned checkpoint loads into an unpruned skeleton); every
    /// parameter must be present, unknown names are an error, `num_batches_tracked` is
    /// ignored, and f16/bf16/f64 tensors are converted to f32.
    pub fn with_weights_from(&self, path: impl AsRef<Path>) -> Result<Network> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| CompressionError::io(path, e))?;
        let tensors = read_tensors(path, &bytes)?;
        Network::from_topology(&self.topology(), &tensors)
    }

    /// Builds a network from a topology and named tensors, then validates all shapes.
    pub fn from_topology(
        topology: &Topology,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Network> {
        let mut used = std::collections::HashSet::new();
        let mut take = |name: String| -> Result<Tensor> {
            match tensors.get(&name) {
                Some(t) => {
                    used.insert(name);
                    Ok(t.to_dtype(DType::F32)?.contiguous()?)
                }
                None => Err(CompressionError::Checkpoint(format!(
                    "missing tensor '{name}'"
                ))),
            }
        };
        let mut layers = Vec::with_capacity(topology.layers.len());
        for spec in &topology.layers {
            layers.push(spec.build(&mut take)?);
        }
        let mut unexpected: Vec<&String> = tensors
            .keys()
            .filter(|k| !used.contains(*k) && !k.ends_with("num_batches_tracked"))
            .collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            let shown: Vec<&str> = unexpected.iter().take(5).map(|s| s.as_str()).collect();
            return Err(CompressionError::Checkpoint(format!(
                "{} unexpected tensor(s) for architecture {}: {}",
                unexpected.len(),
                topology.architecture,
                shown.join(", ")
            )));
        }
        let network = Network {
            architecture: topology.architecture.clone(),
            input_size: topology.input_size,
            layers,
        };
        network.validate()?;
        Ok(network)
    }
}

fn read_tensors(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| CompressionError::Checkpoint(format!("{}: {e}", path.display())))
}

/// Serialisable topology of a network: everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub architecture: String,
    pub input_size: [usize; 3],
    pub layers: Vec<LayerSpec>,
}

/// Serialisable description of one layer (no widths: those come from the tensors).
// A residual block's description is larger than the others; topologies are small, read
// once per checkpoint, so boxing would only complicate the serialised form's code.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerSpec {
    Conv2d(ConvSpec),
    BatchNorm {
        name: String,
        eps: f64,
    },
    Relu,
    MaxPool2d {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool2d {
        kernel: usize,
        stride: usize,
    },
    GlobalAvgPool,
    Flatten,
    Linear {
        name: String,
        bias: bool,
    },
    BasicBlock {
        name: String,
        conv1: ConvSpec,
        bn1: String,
        conv2: ConvSpec,
        bn2: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv3: Option<ConvSpec>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bn3: Option<String>,
        shortcut: ShortcutSpec,
    },
}

/// Serialisable convolution hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    pub name: String,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

/// Serialisable shortcut description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ShortcutSpec {
    Identity,
    ZeroPad { stride: usize },
    Projection { conv: ConvSpec, bn: String },
}

impl ConvSpec {
    fn of(c: &Conv2d) -> Self {
        ConvSpec {
            name: c.name.clone(),
            stride: c.stride,
            padding: c.padding,
            bias: c.bias.is_some(),
        }
    }
    fn build(&self, take: &mut dyn FnMut(String) -> Result<Tensor>) -> Result<Conv2d> {
        let weight = take(format!("{}.weight", self.name))?;
        if weight.rank() != 4 {
            return Err(CompressionError::Checkpoint(format!(
                "'{}.weight' must have 4 dimensions, has shape {:?}",
                self.name,
                weight.dims()
            )));
        }
        let bias = if self.bias {
            Some(take(format!("{}.bias", self.name))?)
        } else {
            None
        };
        if self.stride == 0 {
            return Err(CompressionError::Checkpoint(format!(
                "convolution {} has stride 0",
                self.name
            )));
        }
        Ok(Conv2d {
            name: self.name.clone(),
            weight,
            bias,
            stride: self.stride,
            padding: self.padding,
        })
    }
}

fn build_bn(
    name: &str,
    eps: f64,
    take: &mut dyn FnMut(String) -> Result<Tensor>,
) -> Result<BatchNorm> {
    Ok(BatchNorm {
        name: name.to_string(),
        weight: take(format!("{name}.weight"))?,
        bias: take(format!("{name}.bias"))?,
        running_mean: take(format!("{name}.running_mean"))?,
        running_var: take(format!("{name}.running_var"))?,
        eps,
    })
}

impl LayerSpec {
    fn of(layer: &Layer) -> Self {
        match layer {
            Layer::Conv2d(c) => LayerSpec::Conv2d(ConvSpec::of(c)),
            Layer::BatchNorm(b) => LayerSpec::BatchNorm {
                name: b.name.clone(),
                eps: b.eps,
            },
            Layer::Relu => LayerSpec::Relu,
            Layer::MaxPool2d {
                kernel,
                stride,
                padding,
            } => LayerSpec::MaxPool2d {
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
            },
            Layer::AvgPool2d { kernel, stride } => LayerSpec::AvgPool2d {
                kernel: *kernel,
                stride: *stride,
            },
            Layer::GlobalAvgPool => LayerSpec::GlobalAvgPool,
            Layer::Flatten => LayerSpec::Flatten,
            Layer::Linear(l) => LayerSpec::Linear {
                name: l.name.clone(),
                bias: l.bias.is_some(),
            },
            Layer::BasicBlock(b) => LayerSpec::BasicBlock {
                name: b.name.clone(),
                conv1: ConvSpec::of(&b.conv1),
                bn1: b.bn1.name.clone(),
                conv2: ConvSpec::of(&b.conv2),
                bn2: b.bn2.name.clone(),
                conv3: b.conv3.as_ref().map(ConvSpec::of),
                bn3: b.bn3.as_ref().map(|b| b.name.clone()),
                shortcut: match &b.shortcut {
                    Shortcut::Identity => ShortcutSpec::Identity,
                    Shortcut::ZeroPad { stride } => ShortcutSpec::ZeroPad { stride: *stride },
                    Shortcut::Projection { conv, bn } => ShortcutSpec::Projection {
                        conv: ConvSpec::of(conv),
                        bn: bn.name.clone(),
                    },
                },
            },
        }
    }

    fn build(&self, take: &mut dyn FnMut(String) -> Result<Tensor>) -> Result<Layer> {
        Ok(match self {
            LayerSpec::Conv2d(c) => Layer::Conv2d(c.build(take)?),
            LayerSpec::BatchNorm { name, eps } => Layer::BatchNorm(build_bn(name, *eps, take)?),
            LayerSpec::Relu => Layer::Relu,
            LayerSpec::MaxPool2d {
                kernel,
                stride,
                padding,
            } => Layer::MaxPool2d {
                kernel: *kernel,
                stride: *stride,
                padding: *padding,
            },
            LayerSpec::AvgPool2d { kernel, stride } => Layer::AvgPool2d {
                kernel: *kernel,
                stride: *stride,
            },
            LayerSpec::GlobalAvgPool => Layer::GlobalAvgPool,
            LayerSpec::Flatten => Layer::Flatten,
            LayerSpec::Linear { name, bias } => Layer::Linear(Linear {
                name: name.clone(),
                weight: take(format!("{name}.weight"))?,
                bias: if *bias {
                    Some(take(format!("{name}.bias"))?)
                } else {
                    None
                },
            }),
            LayerSpec::BasicBlock {
                name,
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
                shortcut,
            } => Layer::BasicBlock(Box::new(BasicBlock {
                name: name.clone(),
                conv1: conv1.build(take)?,
                bn1: build_bn(bn1, BN_EPS, take)?,
                conv2: conv2.build(take)?,
                bn2: build_bn(bn2, BN_EPS, take)?,
                conv3: match conv3 {
                    Some(c) => Some(c.build(take)?),
                    None => None,
                },
                bn3: match bn3 {
                    Some(b) => Some(build_bn(b, BN_EPS, take)?),
                    None => None,
                },
                shortcut: match shortcut {
                    ShortcutSpec::Identity => Shortcut::Identity,
                    ShortcutSpec::ZeroPad { stride } => Shortcut::ZeroPad { stride: *stride },
                    ShortcutSpec::Projection { conv, bn } => Shortcut::Projection {
                        conv: conv.build(take)?,
                        bn: build_bn(bn, BN_EPS, take)?,
                    },
                },
            })),
        })
    }
}

/// Rewrites a safetensors file's JSON header with its keys in sorted order, so the same
/// network always gives the same bytes. `safetensors::serialize` takes the metadata as a
/// `HashMap`, whose order changes from one map to the next. The sorted header holds the
/// same entries, so it has the same length and the data offsets stay valid.
fn sorted_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |what: &str| CompressionError::Checkpoint(format!("safetensors header: {what}"));
    let size = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| bad("too short"))?;
    let header = bytes.get(8..8 + size).ok_or_else(|| bad("truncated"))?;
    let entries: BTreeMap<String, BTreeMap<String, serde_json::Value>> =
        serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    let mut sorted = serde_json::to_vec(&entries).map_err(|e| bad(&e.to_string()))?;
    if sorted.len() > size {
        return Err(bad("grew when sorted"));
    }
    sorted.resize(size, b' ');
    bytes[8..8 + size].copy_from_slice(&sorted);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `safetensors::serialize` alone gave different bytes on 8 of 20 calls (the metadata
    /// map's order); the sorted header gives one file that still loads.
    #[test]
    fn the_same_network_always_gives_the_same_bytes() {
        let net = Network::vgg16_bn_cifar(1.0 / 16.0, 10, 0).unwrap();
        let first = net.to_safetensors_bytes().unwrap();
        for _ in 0..20 {
            assert!(net.to_safetensors_bytes().unwrap() == first);
        }
        let back = Network::from_safetensors_bytes(&first, Path::new("memory")).unwrap();
        assert_eq!(net.tensor_bits(), back.tensor_bits());
        assert!(back.to_safetensors_bytes().unwrap() == first);
    }
}
