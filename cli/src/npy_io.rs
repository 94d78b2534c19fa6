//! Reading logits and targets from `.npy` files and writing results to them.

use std::io::{Read, Seek, Write};
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

/// The largest header numpy itself reads without being told otherwise
/// (`numpy.lib.format`'s `max_header_size`).
const MAX_HEADER_BYTES: u64 = 10_000;

/// A `.npy` file whose header has been read and checked against the file's size.
type Npy = npyz::NpyFile<std::io::BufReader<std::fs::File>>;

/// Opens a `.npy` file for reading, refusing — before anything is allocated for its
/// data — what is not a regular file, a header longer than numpy's limit or not of
/// the flat form numpy writes, a shape whose element count overflows, and a body
/// whose size is not the one the header declares (so a 64-byte file cannot make the
/// reader allocate gigabytes).
///
/// The header is parsed here first ([`parse_header`]) and handed to npyz only when
/// it is a flat dict of a type string, a boolean and a tuple of extents: npyz's
/// parser (py_literal's pest grammar) parses the last element of a nested list or
/// dict twice per level, so a 60-byte header of nested brackets took hours.
fn open(path: &Path) -> Result<Npy, String> {
    let shown = path.display();
    // `metadata` does not open the file: a FIFO is refused without blocking on it.
    let metadata = std::fs::metadata(path).map_err(|error| format!("cannot open {shown}: {error}"))?;
    if metadata.is_dir() {
        return Err(format!("{shown} is a directory, not a .npy file"));
    }
    if !metadata.is_file() {
        return Err(format!("{shown} is not a regular file (a device, pipe or socket)"));
    }
    let mut file = std::fs::File::open(path).map_err(|error| format!("cannot open {shown}: {error}"))?;
    let header_bytes = read_header(&mut file).map_err(|error| format!("{shown} is not a valid .npy file: {error}"))?;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|error| format!("cannot read {shown}: {error}"))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
        .map_err(|error| format!("{shown} is not a valid .npy file: {error}"))?;
    let elements = npy
        .shape()
        .iter()
        .try_fold(1u64, |product, &extent| product.checked_mul(extent))
        .ok_or_else(|| {
            format!(
                "{shown}: the shape {:?} has more elements than fit in 64 bits",
                npy.shape()
            )
        })?;
    let item_bytes = npy.dtype().num_bytes().and_then(|bytes| u64::try_from(bytes).ok());
    let declared = item_bytes
        .and_then(|bytes| bytes.checked_mul(elements))
        .ok_or_else(|| {
            format!(
                "{shown}: the shape {:?} declares more bytes than fit in 64 bits",
                npy.shape()
            )
        })?;
    let body = metadata.len().saturating_sub(header_bytes);
    if body != declared {
        return Err(format!(
            "{shown}: the header declares shape {:?} ({declared} bytes of data) but the file holds {body} bytes after \
             its header; the file is truncated or not a .npy file",
            npy.shape()
        ));
    }
    Ok(npy)
}

/// Reads a `.npy` header (magic, version, header length, then the header dict) and
/// returns the length of the whole header, magic included; refuses a header longer than [`MAX_HEADER_BYTES`] or not of the form
/// [`parse_header`] reads.
fn read_header(file: &mut std::fs::File) -> Result<u64, String> {
    let mut prefix = [0u8; 12];
    let read = read_up_to(file, &mut prefix).map_err(|error| error.to_string())?;
    if read < 10 || &prefix[..6] != b"\x93NUMPY" {
        return Err("it does not start with the .npy magic bytes".into());
    }
    let (text_length, fixed) = match prefix[6] {
        1 => (u64::from(u16::from_le_bytes([prefix[8], prefix[9]])), 10),
        2 | 3 if read == 12 => (
            u64::from(u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]])),
            12,
        ),
        2 | 3 => return Err("its header is truncated".into()),
        version => return Err(format!("format version {version} is not one numpy writes (1, 2 or 3)")),
    };
    if text_length > MAX_HEADER_BYTES {
        return Err(format!(
            "its header claims {text_length} bytes, more than numpy's limit of {MAX_HEADER_BYTES}"
        ));
    }
    // At most MAX_HEADER_BYTES, checked above.
    let mut text = vec![0u8; text_length as usize];
    file.seek(std::io::SeekFrom::Start(fixed))
        .map_err(|error| error.to_string())?;
    if read_up_to(file, &mut text).map_err(|error| error.to_string())? != text.len() {
        return Err("its header is truncated".into());
    }
    parse_header(&text).map_err(|error| format!("its header {error}"))?;
    Ok(fixed + text_length)
}

/// The shape of a `.npy` header dict of the form numpy writes, refusing any other:
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` with the keys in any
/// order, each once, `'` or `"` quotes, Python's blanks between tokens, an optional
/// trailing comma and padding after the brace. The descr must be a type string
/// (printable ASCII): a structured dtype (a list of fields) is refused here, as
/// every reader would refuse it. No nesting, so no parse does more than one pass.
fn parse_header(text: &[u8]) -> Result<Vec<u64>, String> {
    let mut header = HeaderText { text, at: 0 };
    header.expect(b'{')?;
    let (mut descr, mut fortran_order, mut shape) = (false, false, None);
    while !header.eat(b'}') {
        let key = header.string()?;
        header.expect(b':')?;
        let seen = match key {
            "descr" => {
                header.blanks();
                if header.peek() == Some(b'[') {
                    return Err("declares a structured dtype (a list of fields); only plain dtypes are read".into());
                }
                header.string()?;
                std::mem::replace(&mut descr, true)
            }
            "fortran_order" => {
                header.blanks();
                let word = header.take_while(|byte| byte.is_ascii_alphabetic());
                if word != b"True" && word != b"False" {
                    return Err(header.unexpected("True or False"));
                }
                std::mem::replace(&mut fortran_order, true)
            }
            "shape" => shape.replace(header.shape()?).is_some(),
            other => {
                return Err(format!(
                    "has the key {other:?}; numpy writes descr, fortran_order and shape only"
                ));
            }
        };
        if seen {
            return Err(format!("has the key {key:?} twice"));
        }
        if !header.eat(b',') {
            header.expect(b'}')?;
            break;
        }
    }
    if !header.text[header.at..]
        .iter()
        .all(|byte| matches!(byte, b' ' | b'\t' | b'\x0c' | b'\r' | b'\n'))
    {
        return Err(header.unexpected("only padding after the dict"));
    }
    match (descr, fortran_order, shape) {
        (true, true, Some(shape)) => Ok(shape),
        _ => Err("lacks one of the keys descr, fortran_order and shape".into()),
    }
}

/// A cursor over a header's text, for [`parse_header`].
struct HeaderText<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> HeaderText<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(&keep) {
            self.at += 1;
        }
        &self.text[start..self.at]
    }

    /// Python's blanks between tokens (py_literal's too: no newlines).
    fn blanks(&mut self) {
        self.take_while(|byte| matches!(byte, b' ' | b'\t' | b'\x0c'));
    }

    fn unexpected(&self, wanted: &str) -> String {
        match self.peek() {
            Some(byte) => format!("has {:?} at byte {} where {wanted} belongs", char::from(byte), self.at),
            None => format!("ends where {wanted} belongs"),
        }
    }

    /// Skips blanks, then consumes `byte` if it comes next.
    fn eat(&mut self, byte: u8) -> bool {
        self.blanks();
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        match self.eat(byte) {
            true => Ok(()),
            false => Err(self.unexpected(&format!("{:?}", char::from(byte)))),
        }
    }

    /// A quoted string of printable ASCII without escapes.
    fn string(&mut self) -> Result<&'a str, String> {
        self.blanks();
        let quote = match self.peek() {
            Some(quote @ (b'\'' | b'"')) => quote,
            _ => return Err(self.unexpected("a quoted string")),
        };
        self.at += 1;
        let content =
            self.take_while(|byte| byte != quote && byte != b'\\' && (byte == b' ' || byte.is_ascii_graphic()));
        if self.peek() != Some(quote) {
            return Err(self.unexpected("the string's closing quote"));
        }
        self.at += 1;
        // Printable ASCII, checked above.
        std::str::from_utf8(content).map_err(|error| error.to_string())
    }

    /// A tuple of non-negative decimal extents: `()`, `(3,)`, `(2, 3)`, `(2, 3,)`.
    fn shape(&mut self) -> Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut extents = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(extents);
            }
            self.blanks();
            let digits = self.take_while(|byte| byte.is_ascii_digit());
            if digits.is_empty() {
                return Err(self.unexpected("a non-negative extent"));
            }
            let extent = std::str::from_utf8(digits)
                .ok()
                .and_then(|digits| digits.parse::<u64>().ok())
                .ok_or_else(|| format!("declares an extent beyond 64 bits ({} digits)", digits.len()))?;
            extents.push(extent);
            if !self.eat(b',') {
                self.expect(b')')?;
                if extents.len() == 1 {
                    return Err("declares the shape (n) without the comma of a one-element tuple".into());
                }
                return Ok(extents);
            }
        }
    }
}

/// Fills `buffer` as far as the file allows; returns how many bytes were read.
fn read_up_to(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            count => filled += count,
        }
    }
    Ok(filled)
}

fn type_string(npy: &Npy) -> String {
    match npy.dtype() {
        npyz::DType::Plain(type_string) => type_string.to_string(),
        other => format!("{other:?}"),
    }
}

fn check_c_order(npy: &Npy, path: &Path) -> Result<(), String> {
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
    Ok((floats_of(npy, path, what, "float32 or float64")?, shape))
}

/// The values of an opened float file as f32 (float64 converted), naming
/// `accepted` dtypes when it holds another.
fn floats_of(npy: Npy, path: &Path, what: &str, accepted: &str) -> Result<Vec<f32>, String> {
    let values = match type_string(&npy).as_str() {
        "<f4" => npy.into_vec::<f32>().map_err(read_error(path))?,
        "<f8" => npy
            .into_vec::<f64>()
            .map_err(read_error(path))?
            .into_iter()
            .map(|value| value as f32)
            .collect(),
        other => return Err(unsupported_dtype(path, what, other, accepted)),
    };
    Ok(values)
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
    let values = floats_of(npy, path, "logits", "float16, float32 or float64")?;
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
        return Ok(TargetsFile::Probabilities(floats_of(
            npy,
            path,
            "targets",
            "float32 or float64",
        )?));
    }
    if shape != index_shape {
        return Err(format!(
            "{}: class-index targets must have shape {index_shape:?}, found {shape:?}",
            path.display()
        ));
    }
    let widened = |values: Vec<i32>| Ok(TargetsFile::I32(values));
    match dtype.as_str() {
        "<i8" => Ok(TargetsFile::I64(npy.into_vec().map_err(read_error(path))?)),
        "<i4" => Ok(TargetsFile::I32(npy.into_vec().map_err(read_error(path))?)),
        "<u4" => Ok(TargetsFile::U32(npy.into_vec().map_err(read_error(path))?)),
        // Narrow integer class indices are widened to int32 (exact).
        "<i2" => widened(into_i32::<i16>(npy, path)?),
        "<u2" => widened(into_i32::<u16>(npy, path)?),
        "|i1" => widened(into_i32::<i8>(npy, path)?),
        "|u1" => widened(into_i32::<u8>(npy, path)?),
        other => Err(unsupported_dtype(
            path,
            "targets",
            other,
            "class indices of a signed or unsigned integer type (int8 to int64, uint8 to uint32) or float32/float64 \
             probabilities",
        )),
    }
}

/// The values of an integer `.npy` file widened to i32.
fn into_i32<T: npyz::Deserialize + Into<i32>>(npy: Npy, path: &Path) -> Result<Vec<i32>, String> {
    let values: Vec<T> = npy.into_vec().map_err(read_error(path))?;
    Ok(values.into_iter().map(Into::into).collect())
}

/// The message for a dtype that is not accepted: what is, and for a big-endian
/// type of an accepted kind, how to save it.
fn unsupported_dtype(path: &Path, what: &str, dtype: &str, accepted: &str) -> String {
    if let Some(little) = dtype.strip_prefix('>') {
        return format!(
            "{}: {what} are stored big-endian (dtype {dtype}); save them little-endian (numpy: \
             a.astype('<{little}'))",
            path.display()
        );
    }
    format!("{}: {what} must be {accepted}; found dtype {dtype}", path.display())
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

/// Writes `values` as an f16 array of `shape` to `out`.
pub fn write_f16(out: &mut dyn Write, values: &[xent::half::f16], shape: &[u64]) -> std::io::Result<()> {
    write_array(out, values, shape)
}

/// Writes `values` as an f32 array of `shape` to `out`.
pub fn write_f32(out: &mut dyn Write, values: &[f32], shape: &[u64]) -> std::io::Result<()> {
    write_array(out, values, shape)
}

/// Writes `values` as an array of `shape` in their own dtype.
fn write_array<T: npyz::AutoSerialize + Copy>(out: &mut dyn Write, values: &[T], shape: &[u64]) -> std::io::Result<()> {
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(out)
        .begin_nd()?;
    writer.extend(values.iter().copied())?;
    writer.finish()
}
