//! ImageNet initialisation from timm's TF-ported weights: `tf_mobilenetv3_large_100` and
//! `tf_efficientnetv2_b2` state dicts, as safetensors or PyTorch `.pth` files (the format is
//! told by the bytes, not the name). These models are built like Keras ('same' padding,
//! BatchNorm ε 1e-3), so they are what KerasCV's presets carry.
//!
//! Every backbone parameter is mapped by name to its timm key ([`timm_names`]); timm's
//! classifier, and MobileNetV3's extra 1280-wide `conv_head`, are left out, so our 6-way head
//! keeps its fresh weights. A missing key, a shape that differs, or a timm tensor that maps
//! nowhere is an error naming the file and the key; nothing is applied unless everything fits.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use burn_store::pytorch::PytorchReader;
use burn_store::{ModuleSnapshot, ModuleStore, SafetensorsStore, TensorSnapshot};

use super::layers::InvertedResidual;
use super::mobilenetv3::STAGES as MOBILENET_STAGES;
use super::{Backbone, Model, ModelConfig};

/// Keys timm keeps beside the backbone that we deliberately do not import.
const LEFT_OUT: [&str; 2] = ["conv_head.", "classifier."];

/// Top-level keys under which `.pth` checkpoints commonly nest their state dict.
const NESTED: [&str; 4] = ["state_dict", "model", "state_dict_ema", "model_ema"];

/// Why a weights file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: not a safetensors or PyTorch state dict ({detail})")]
    Unreadable { file: String, detail: String },
    #[error("{file}: tensor `{key}` is not a float tensor ({dtype:?})")]
    NotFloat {
        file: String,
        key: String,
        dtype: DType,
    },
    #[error(
        "{file} does not fit {arch} (width {width}): {} problem(s); expected timm's {timm} \
         state dict{}:\n  {}{}",
        problems.len(),
        if *width == 1.0 { "" } else { " at the same width" },
        problems.iter().take(12).cloned().collect::<Vec<_>>().join("\n  "),
        if problems.len() > 12 { "\n  …" } else { "" }
    )]
    Mismatch {
        file: String,
        arch: &'static str,
        timm: &'static str,
        width: f64,
        problems: Vec<String>,
    },
}

/// A timm state dict held in memory, keys as timm names them.
#[derive(Debug, Clone)]
pub struct Pretrained {
    /// Where the weights came from (file or URL), for messages and `config.json`.
    pub source: String,
    pub tensors: BTreeMap<String, TensorData>,
}

impl Pretrained {
    /// Parses a safetensors or PyTorch (`.pth`, zip or legacy pickle) state dict. A `.pth`
    /// whose weights sit under `state_dict`, `model` or an EMA key is unwrapped; a `module.`
    /// prefix (DataParallel) is removed.
    pub fn parse(source: &str, bytes: Vec<u8>) -> Result<Self, ImportError> {
        let unreadable = |detail: String| ImportError::Unreadable {
            file: source.to_string(),
            detail,
        };
        let tensors = if looks_like_safetensors(&bytes) {
            let mut store = SafetensorsStore::from_bytes(Some(bytes));
            let snapshots = store
                .get_all_snapshots()
                .map_err(|e| unreadable(e.to_string()))?;
            materialize(source, snapshots.clone())?
        } else {
            // burn-store reads the zip format (torch.save's default) only from a file, and
            // lazily: the copy must outlive `materialize`.
            let file = if bytes.starts_with(b"PK") {
                let mut file = tempfile::NamedTempFile::new()
                    .map_err(|e| unreadable(format!("temporary copy: {e}")))?;
                std::io::Write::write_all(&mut file, &bytes)
                    .map_err(|e| unreadable(format!("temporary copy: {e}")))?;
                Some(file)
            } else {
                None
            };
            let read = |key: Option<&str>| match (&file, key) {
                (Some(f), None) => PytorchReader::new(f.path()),
                (Some(f), Some(k)) => PytorchReader::with_top_level_key(f.path(), k),
                (None, k) => PytorchReader::from_reader(Cursor::new(&bytes), k),
            };
            let mut reader = read(None).map_err(|e| unreadable(e.to_string()))?;
            let flat = reader.keys().iter().any(|k| k.ends_with(".weight"));
            if let Some(inner) = NESTED
                .iter()
                .filter(|_| !flat)
                .find_map(|k| read(Some(k)).ok().filter(|r| !r.is_empty()))
            {
                reader = inner;
            }
            materialize(source, reader.into_tensors())?
        };
        if tensors.is_empty() {
            return Err(unreadable("it holds no float tensors".into()));
        }
        Ok(Self {
            source: source.to_string(),
            tensors,
        })
    }

    /// Loads these weights into the backbone of `model` (built from `config`); the head is
    /// untouched. All-or-nothing:
    /// on error the model is dropped and nothing partial escapes.
    pub fn apply<B: Backend>(
        &self,
        mut model: Model<B>,
        config: &ModelConfig,
    ) -> Result<Model<B>, ImportError> {
        let names = timm_names(&model.backbone);
        let ours: HashMap<String, TensorSnapshot> = model
            .collect(None, None, true)
            .into_iter()
            .map(|s| (s.full_path(), s))
            .collect();
        let mut problems = Vec::new();
        let mut snapshots = Vec::with_capacity(names.len());
        for (path, key) in &names {
            let Some(target) = ours.get(path) else {
                problems.push(format!("internal: no parameter `{path}` in our model"));
                continue;
            };
            let Some(data) = self.tensors.get(key) else {
                problems.push(format!("missing `{key}` (for our `{path}`)"));
                continue;
            };
            if data.shape.as_slice() != target.shape.as_slice() {
                problems.push(format!(
                    "`{key}` has shape {:?}, our `{path}` needs {:?}",
                    data.shape.as_slice(),
                    target.shape.as_slice()
                ));
                continue;
            }
            snapshots.push(TensorSnapshot::from_data(
                data.clone().convert_dtype(target.dtype),
                target.path_stack.clone().unwrap_or_default(),
                target.container_stack.clone().unwrap_or_default(),
                target.tensor_id.unwrap_or_else(ParamId::new),
            ));
        }
        let mapped: std::collections::HashSet<&str> =
            names.iter().map(|(_, k)| k.as_str()).collect();
        let unused: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !mapped.contains(k.as_str()) && !LEFT_OUT.iter().any(|p| k.starts_with(p)))
            .collect();
        if !unused.is_empty() {
            problems.push(format!(
                "{} tensor(s) map to nothing in our model, e.g. `{}`",
                unused.len(),
                unused[0]
            ));
        }
        let mismatch = |problems| ImportError::Mismatch {
            file: self.source.clone(),
            arch: config.arch.name(),
            timm: config.arch.timm_name(),
            width: config.width,
            problems,
        };
        if !problems.is_empty() {
            return Err(mismatch(problems));
        }
        let result = model.apply(snapshots, None, None, true);
        let mut problems: Vec<String> = result.errors.iter().map(|e| format!("{e:?}")).collect();
        if result.applied.len() != names.len() {
            problems.push(format!(
                "{} of {} tensors applied",
                result.applied.len(),
                names.len()
            ));
        }
        if problems.is_empty() {
            Ok(model)
        } else {
            Err(mismatch(problems))
        }
    }
}

/// Reads every tensor's data (snapshots are lazy), dropping BatchNorm's step counters and a
/// DataParallel `module.` prefix.
fn materialize(
    source: &str,
    snapshots: impl IntoIterator<Item = (String, TensorSnapshot)>,
) -> Result<BTreeMap<String, TensorData>, ImportError> {
    let mut tensors = BTreeMap::new();
    for (key, snapshot) in snapshots {
        let key = key.strip_prefix("module.").unwrap_or(&key).to_string();
        if key.ends_with("num_batches_tracked") {
            continue;
        }
        if !snapshot.dtype.is_float() {
            return Err(ImportError::NotFloat {
                file: source.to_string(),
                key,
                dtype: snapshot.dtype,
            });
        }
        let data = snapshot.to_data().map_err(|e| ImportError::Unreadable {
            file: source.to_string(),
            detail: format!("{key}: {e}"),
        })?;
        tensors.insert(key, data);
    }
    Ok(tensors)
}

/// Safetensors starts with a little-endian header length and a JSON object.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 9
        && bytes[8] == b'{'
        && u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) < bytes.len() as u64
}

/// Every backbone parameter's path in our model (enum variants skipped, as `collect` gives
/// them with `skip_enum_variants`) and timm's key for it.
pub fn timm_names<B: Backend>(backbone: &Backbone<B>) -> Vec<(String, String)> {
    let mut names = Vec::new();
    let (blocks, stages, last): (_, Vec<usize>, [&str; 3]) = match backbone {
        Backbone::MobileNetV3(m) => (
            &m.blocks,
            MOBILENET_STAGES.to_vec(),
            ["backbone.last", "blocks.6.0.conv", "blocks.6.0.bn1"],
        ),
        Backbone::EfficientNetV2(m) => (
            &m.blocks,
            m.stages.clone(),
            ["backbone.top", "conv_head", "bn2"],
        ),
    };
    conv_bn(&mut names, "backbone.stem", "conv_stem", "bn1");
    let mut index = 0;
    for (stage, &count) in stages.iter().enumerate() {
        for j in 0..count {
            let ours = format!("backbone.blocks.{index}");
            block(
                &mut names,
                &ours,
                &blocks[index],
                &format!("blocks.{stage}.{j}"),
            );
            index += 1;
        }
    }
    debug_assert_eq!(index, blocks.len(), "stage sizes cover every block");
    let [ours, conv, bn] = last;
    conv_bn(&mut names, ours, conv, bn);
    names
}

/// timm's names for one [`InvertedResidual`], by the parts it has: `ir` (expansion and
/// depthwise), `ds` (depthwise only), `er` (fused expansion only) or `cn` (a single conv).
fn block<B: Backend>(
    names: &mut Vec<(String, String)>,
    ours: &str,
    b: &InvertedResidual<B>,
    timm: &str,
) {
    let mut part = |field: &str, conv: &str, bn: &str| {
        conv_bn(
            names,
            &format!("{ours}.{field}"),
            &format!("{timm}.{conv}"),
            &format!("{timm}.{bn}"),
        )
    };
    match (&b.expand, &b.depthwise) {
        (Some(_), Some(_)) => {
            part("expand", "conv_pw", "bn1");
            part("depthwise", "conv_dw", "bn2");
            part("project", "conv_pwl", "bn3");
        }
        (None, Some(_)) => {
            part("depthwise", "conv_dw", "bn1");
            part("project", "conv_pw", "bn2");
        }
        (Some(_), None) => {
            part("expand", "conv_exp", "bn1");
            part("project", "conv_pwl", "bn2");
        }
        (None, None) => part("project", "conv", "bn1"),
    }
    if b.se.is_some() {
        for (o, t) in [("reduce", "conv_reduce"), ("expand", "conv_expand")] {
            for leaf in ["weight", "bias"] {
                names.push((
                    format!("{ours}.se.{o}.{leaf}"),
                    format!("{timm}.se.{t}.{leaf}"),
                ));
            }
        }
    }
}

/// A [`super::layers::ConvBn`]: the bias-free conv's weight and BatchNorm's four tensors.
fn conv_bn(names: &mut Vec<(String, String)>, ours: &str, conv: &str, bn: &str) {
    names.push((format!("{ours}.conv.weight"), format!("{conv}.weight")));
    for (o, t) in [
        ("gamma", "weight"),
        ("beta", "bias"),
        ("running_mean", "running_mean"),
        ("running_var", "running_var"),
    ] {
        names.push((format!("{ours}.bn.{o}"), format!("{bn}.{t}")));
    }
}
