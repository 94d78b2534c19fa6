//! Reading logits and targets from `.npy` files and writing results to them.

use std::path::Path;

use npyz::WriterBuilder;

/// Targets read from a file: class indices in the integer type the file holds,
/// or probabilities (soft targets) from a float32/float64 file.
pub enum TargetsFile {
    I64(Vec<i64>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    Probabilities(Vec<f32>),
}

impl TargetsFile {
    pub fn as_targets(&self) -> xent::Targets<'_> {
        match self {
            TargetsFile::I64(values) => xent::Targets::I64(values),
            TargetsFile::I32(values) => xent::Targets::I32(values),
            TargetsFile::U32(values) => xent::Targets::U32(values),
            TargetsFile::Probabilities(values) => xent::Targets::Probabilities(values),
        }
    }
}

fn open(path: &Path) -> Result<npyz::NpyFile<std::io::BufReader<std::fs::File>>, String> {
    let file = std::fs::File::open(path).map_err(|error| format!("cannot open {}: {error}", path.display()))?;
    npyz::NpyFile::new(std::io::BufReader::new(file))
        .map_err(|error| format!("{} is not a valid .npy file: {error}", path.display()))
}

fn type_string(npy: &npyz::NpyFile<std::io::BufReader<std::fs::File>>) -> String {
    match npy.dtype() {
        npyz::DType::Plain(type_string) => type_string.to_string(),
        other => format!("{other:?}"),
    }
}

fn check_c_order(npy: &npyz::NpyFile<std::io::BufReader<std::fs::File>>, path: &Path) -> Result<(), String> {
    if npy.order() != npyz::Order::C && npy.shape().iter().filter(|&&extent| extent > 1).count() > 1 {
        return Err(format!(
            "{} is stored in Fortran order; save it C-contiguous",
            path.display()
        ));
    }
    Ok(())
}

fn read_error(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |error| format!("cannot read {}: {error}", path.display())
}

/// A float array as f32 (f64 files are converted), with its shape.
pub fn read_floats(path: &Path, what: &str) -> Result<(Vec<f32>, Vec<u64>), String> {
    let npy = open(path)?;
    check_c_order(&npy, path)?;
    let shape = npy.shape().to_vec();
    let values = match type_string(&npy).as_str() {
        "<f4" => npy.into_vec::<f32>().map_err(read_error(path))?,
        "<f8" => npy
            .into_vec::<f64>()
            .map_err(read_error(path))?
            .into_iter()
            .map(|value| value as f32)
            .collect(),
        other => {
            return Err(format!(
                "{}: {what} must be float32 or float64, found dtype {other}",
                path.display()
            ));
        }
    };
    Ok((values, shape))
}

/// Logits as read: f32 (float64 files are converted) or f16 (kept half precision).
pub enum LogitsFile {
    F32(Vec<f32>),
    F16(Vec<xent::half::f16>),
}

impl LogitsFile {
    pub fn as_logits(&self) -> xent::Logits<'_> {
        match self {
            LogitsFile::F32(values) => xent::Logits::F32(values),
            LogitsFile::F16(values) => xent::Logits::F16(values),
        }
    }
}

/// Logits of shape (N, C) or (N, C, d1, …, dk): float16 stays half precision,
/// float32 is read as is, float64 is converted to f32.
pub fn read_logits(path: &Path) -> Result<(LogitsFile, Vec<u64>), String> {
    let npy = open(path)?;
    check_c_order(&npy, path)?;
    let shape = npy.shape().to_vec();
    if shape.len() < 2 {
        return Err(format!(
            "{}: logits must have shape (N, C) or (N, C, d1, ...), found {shape:?}",
            path.display()
        ));
    }
    if type_string(&npy) == "<f2" {
        return Ok((LogitsFile::F16(npy.into_vec().map_err(read_error(path))?), shape));
    }
    let (values, shape) = read_floats(path, "logits (float16, float32 or float64)")?;
    Ok((LogitsFile::F32(values), shape))
}

/// Targets: class indices of shape `index_shape` (int64, int32 or uint32), or
/// probabilities of shape `logits_shape` (float32/float64: soft targets).
pub fn read_targets(path: &Path, index_shape: &[u64], logits_shape: &[u64]) -> Result<TargetsFile, String> {
    let npy = open(path)?;
    check_c_order(&npy, path)?;
    let shape = npy.shape().to_vec();
    let dtype = type_string(&npy);
    if dtype == "<f4" || dtype == "<f8" {
        if shape != logits_shape {
            return Err(format!(
                "{}: soft targets must have the logits' shape {logits_shape:?}, found {shape:?}",
                path.display()
            ));
        }
        return Ok(TargetsFile::Probabilities(read_floats(path, "targets")?.0));
    }
    if shape != index_shape {
        return Err(format!(
            "{}: class-index targets must have shape {index_shape:?}, found {shape:?}",
            path.display()
        ));
    }
    match dtype.as_str() {
        "<i8" => Ok(TargetsFile::I64(npy.into_vec().map_err(read_error(path))?)),
        "<i4" => Ok(TargetsFile::I32(npy.into_vec().map_err(read_error(path))?)),
        "<u4" => Ok(TargetsFile::U32(npy.into_vec().map_err(read_error(path))?)),
        other => Err(format!(
            "{}: targets must be int64, int32 or uint32 class indices, or float probabilities; found dtype {other}",
            path.display()
        )),
    }
}

/// A 1-D f32 vector of `expected` entries (class weights).
pub fn read_vector(path: &Path, what: &str, expected: usize) -> Result<Vec<f32>, String> {
    let (values, shape) = read_floats(path, what)?;
    if shape != [expected as u64] {
        return Err(format!(
            "{}: {what} must have shape ({expected},), found {shape:?}",
            path.display()
        ));
    }
    Ok(values)
}

/// A 2-D float array of shape (N, C) as f32 (f64 files are converted), with N and C.
pub fn read_matrix(path: &Path, what: &str) -> Result<(Vec<f32>, usize, usize), String> {
    let (values, shape) = read_floats(path, what)?;
    let [rows, classes] = shape[..] else {
        return Err(format!(
            "{}: {what} must have shape (N, C), found {shape:?}",
            path.display()
        ));
    };
    Ok((values, rows as usize, classes as usize))
}

/// Writes `values` as an f16 array of `shape`.
pub fn write_f16(path: &Path, values: &[xent::half::f16], shape: &[u64]) -> Result<(), String> {
    write_array(path, values, shape)
}

/// Writes `values` as an f32 array of `shape`.
pub fn write_f32(path: &Path, values: &[f32], shape: &[u64]) -> Result<(), String> {
    write_array(path, values, shape)
}

/// Writes `values` as an array of `shape` in their own dtype.
fn write_array<T: npyz::AutoSerialize + Copy>(path: &Path, values: &[T], shape: &[u64]) -> Result<(), String> {
    let write_error = |error: std::io::Error| format!("cannot write {}: {error}", path.display());
    let file = std::fs::File::create(path).map_err(write_error)?;
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(write_error)?;
    writer.extend(values.iter().copied()).map_err(write_error)?;
    writer.finish().map_err(write_error)
}
