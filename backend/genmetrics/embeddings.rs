//! Embedding matrices and their files.
//!
//! Owns the [`Embeddings`] type (a dense row-major `f32` matrix, one row per sample), its
//! validation, and the readers and writers for the file formats the platform accepts:
//! NumPy `.npy` (f16/f32/f64, C order, format versions 1 to 3), `.safetensors` (one 2-D
//! F16/BF16/F32/F64 tensor), CSV of numbers (an optional header line is detected), and raw
//! little-endian `f32` with a dimension given by the caller.

use std::fs;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{GenMetricsError, Result};

/// A set of embeddings: `rows` samples of `dim` values each, stored row-major in `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Number of samples.
    pub rows: usize,
    /// Values per sample.
    pub dim: usize,
    /// `rows * dim` values, row-major (sample `i` is `data[i * dim..(i + 1) * dim]`).
    pub data: Vec<f32>,
}

impl Embeddings {
    /// Builds a validated set: non-empty, `data.len() == rows * dim`, and every value finite.
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Result<Self> {
        let set = Self { rows, dim, data };
        set.validate()?;
        Ok(set)
    }

    /// Checks the invariants that [`Embeddings::new`] enforces (the fields are public, so the
    /// metric functions check again).
    pub fn validate(&self) -> Result<()> {
        if self.rows == 0 || self.dim == 0 {
            return Err(GenMetricsError::Empty {
                rows: self.rows,
                dim: self.dim,
            });
        }
        let expected = self.rows.checked_mul(self.dim);
        if expected != Some(self.data.len()) {
            return Err(GenMetricsError::LengthMismatch {
                rows: self.rows,
                dim: self.dim,
                len: self.data.len(),
            });
        }
        if let Some(pos) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(GenMetricsError::NonFinite {
                row: pos / self.dim,
                col: pos % self.dim,
                value: self.data[pos],
            });
        }
        Ok(())
    }

    /// Sample `i` as a slice of `dim` values (panics if `i >= rows`, like slice indexing).
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Loads an embedding file, choosing the reader by extension: `.npy`, `.safetensors`, `.csv`,
/// and anything else as raw little-endian `f32`, which needs `dim`.
///
/// `dim`, when given for a self-describing format, must match the file's dimension.
/// `tensor` picks a tensor by name in a `.safetensors` file holding several.
pub fn load_embeddings(
    path: &Path,
    dim: Option<usize>,
    tensor: Option<&str>,
) -> Result<Embeddings> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let set = match ext.as_deref() {
        Some("npy") => read_npy(path)?,
        Some("safetensors") => read_safetensors(path, tensor)?,
        Some("csv") => read_csv(path)?,
        _ => {
            let dim = dim.ok_or_else(|| GenMetricsError::MissingDim {
                path: path.display().to_string(),
            })?;
            return read_raw_f32(path, dim);
        }
    };
    if let Some(expected) = dim
        && expected != set.dim
    {
        return Err(GenMetricsError::FileDimMismatch {
            path: path.display().to_string(),
            expected,
            found: set.dim,
        });
    }
    Ok(set)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| GenMetricsError::Io {
        path: path.display().to_string(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// Raw little-endian f32
// ---------------------------------------------------------------------------------------------

/// Reads a headerless file of little-endian `f32` values, `dim` per row.
pub fn read_raw_f32(path: &Path, dim: usize) -> Result<Embeddings> {
    let bytes = read_file(path)?;
    parse_raw_f32(&bytes, dim)
}

/// Parses headerless little-endian `f32` bytes, `dim` values per row.
pub fn parse_raw_f32(bytes: &[u8], dim: usize) -> Result<Embeddings> {
    if dim == 0 {
        return Err(GenMetricsError::InvalidParam(
            "the dimension of a raw f32 file must be at least 1".into(),
        ));
    }
    if bytes.is_empty() {
        return Err(GenMetricsError::Empty { rows: 0, dim });
    }
    let row_bytes = dim
        .checked_mul(4)
        .ok_or_else(|| GenMetricsError::InvalidParam(format!("dimension {dim} is too large")))?;
    if !bytes.len().is_multiple_of(row_bytes) {
        return Err(GenMetricsError::Truncated {
            len: bytes.len(),
            row_bytes,
        });
    }
    let data = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect::<Vec<_>>();
    Embeddings::new(bytes.len() / row_bytes, dim, data)
}

/// Writes the values as headerless little-endian `f32` (the golden-data format).
pub fn write_raw_f32(path: &Path, set: &Embeddings) -> Result<()> {
    let mut bytes = Vec::with_capacity(set.data.len() * 4);
    for v in &set.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_file(path, &bytes)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |source| GenMetricsError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = fs::File::create(path).map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.flush().map_err(io_err)
}

// ---------------------------------------------------------------------------------------------
// NumPy .npy
// ---------------------------------------------------------------------------------------------

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a 2-D `.npy` array of f16, f32 or f64 in C order (format versions 1, 2 and 3).
pub fn read_npy(path: &Path) -> Result<Embeddings> {
    let bytes = read_file(path)?;
    parse_npy(&bytes)
}

/// Parses the bytes of a `.npy` file (see [`read_npy`]).
pub fn parse_npy(bytes: &[u8]) -> Result<Embeddings> {
    let npy_err = |msg: &str| GenMetricsError::Npy(msg.to_string());
    if bytes.is_empty() {
        return Err(GenMetricsError::Empty { rows: 0, dim: 0 });
    }
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return Err(npy_err("missing the \\x93NUMPY magic string"));
    }
    let major = bytes[6];
    let (header_len, header_start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(npy_err("file ends inside the header length"));
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (len as usize, 12)
        }
        v => {
            return Err(GenMetricsError::Npy(format!(
                "unsupported format version {v}"
            )));
        }
    };
    let header_end = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| npy_err("file ends inside the header"))?;
    let header = std::str::from_utf8(&bytes[header_start..header_end])
        .map_err(|_| npy_err("the header is not valid UTF-8"))?;
    let header = NpyHeader::parse(header)?;
    if header.fortran_order {
        return Err(GenMetricsError::NpyFortranOrder);
    }
    let (rows, dim) = match header.shape.as_slice() {
        [rows, dim] => (*rows, *dim),
        other => {
            return Err(GenMetricsError::NotMatrix {
                shape: other.to_vec(),
            });
        }
    };
    let kind = NpyKind::from_descr(&header.descr)?;
    let count = rows
        .checked_mul(dim)
        .ok_or_else(|| npy_err("the shape is too large"))?;
    if count == 0 {
        return Err(GenMetricsError::Empty { rows, dim });
    }
    let payload = &bytes[header_end..];
    let needed = count
        .checked_mul(kind.size)
        .ok_or_else(|| npy_err("the shape is too large"))?;
    if payload.len() < needed {
        return Err(GenMetricsError::Npy(format!(
            "the data is truncated: shape ({rows}, {dim}) of {} needs {needed} bytes, found {}",
            header.descr,
            payload.len()
        )));
    }
    let data = decode_floats(&payload[..needed], kind);
    Embeddings::new(rows, dim, data)
}

/// Writes a 2-D little-endian f32 `.npy` file (format version 1, C order).
pub fn write_npy(path: &Path, set: &Embeddings) -> Result<()> {
    write_file(path, &encode_npy(set))
}

/// Encodes the set as the bytes of a version-1 f32 `.npy` file.
pub fn encode_npy(set: &Embeddings) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        set.rows, set.dim
    );
    // Pad with spaces so that magic + version + length + header is a multiple of 64 bytes,
    // ending in a newline, as NumPy does.
    let unpadded = NPY_MAGIC.len() + 2 + 2 + header.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    header.extend(std::iter::repeat_n(' ', padding));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + set.data.len() * 4);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    // Headers of 2-D shapes are far below the 65,535-byte limit of version 1.
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &set.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum FloatFormat {
    F16,
    Bf16,
    F32,
    F64,
}

#[derive(Clone, Copy, Debug)]
struct NpyKind {
    format: FloatFormat,
    size: usize,
    big_endian: bool,
}

impl NpyKind {
    fn from_descr(descr: &str) -> Result<Self> {
        let unsupported = || GenMetricsError::UnsupportedDtype {
            dtype: descr.to_string(),
        };
        let (order, code) = descr.split_at_checked(1).ok_or_else(unsupported)?;
        let big_endian = match order {
            "<" | "=" | "|" => false,
            ">" => true,
            _ => return Err(unsupported()),
        };
        let (format, size) = match code {
            "f2" => (FloatFormat::F16, 2),
            "f4" => (FloatFormat::F32, 4),
            "f8" => (FloatFormat::F64, 8),
            _ => return Err(unsupported()),
        };
        Ok(Self {
            format,
            size,
            big_endian,
        })
    }
}

fn decode_floats(bytes: &[u8], kind: NpyKind) -> Vec<f32> {
    let be = kind.big_endian;
    match kind.format {
        FloatFormat::F16 => bytes
            .chunks_exact(2)
            .map(|c| {
                let bits = if be {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                };
                half::f16::from_bits(bits).to_f32()
            })
            .collect(),
        FloatFormat::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| {
                let bits = if be {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                };
                half::bf16::from_bits(bits).to_f32()
            })
            .collect(),
        FloatFormat::F32 => bytes
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if be {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect(),
        // Rounding f64 to f32 may overflow to infinity; validation reports such values.
        FloatFormat::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                let v = if be {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                };
                v as f32
            })
            .collect(),
    }
}

/// The three keys of a `.npy` header dictionary.
#[derive(Debug)]
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value of the small Python-literal subset that `.npy` headers use.
#[derive(Debug)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

impl NpyHeader {
    fn parse(text: &str) -> Result<Self> {
        let mut parser = PyLiteralParser {
            chars: text.trim().chars().collect(),
            pos: 0,
        };
        let entries = parser.dict()?;
        let mut descr = None;
        let mut fortran_order = None;
        let mut shape = None;
        for (key, value) in entries {
            match (key.as_str(), value) {
                ("descr", PyValue::Str(s)) => descr = Some(s),
                ("fortran_order", PyValue::Bool(b)) => fortran_order = Some(b),
                ("shape", PyValue::Tuple(t)) => shape = Some(t),
                ("descr" | "fortran_order" | "shape", _) => {
                    return Err(GenMetricsError::Npy(format!(
                        "header key '{key}' has a value of the wrong type"
                    )));
                }
                _ => {}
            }
        }
        let missing = |k: &str| GenMetricsError::Npy(format!("header lacks the '{k}' key"));
        Ok(Self {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }
}

struct PyLiteralParser {
    chars: Vec<char>,
    pos: usize,
}

impl PyLiteralParser {
    fn err(&self, what: &str) -> GenMetricsError {
        GenMetricsError::Npy(format!(
            "cannot parse the header at character {}: {what}",
            self.pos
        ))
    }

    fn skip_ws(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.get(self.pos).copied()
    }

    fn expect(&mut self, c: char) -> Result<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{c}'")))
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, PyValue)>> {
        self.expect('{')?;
        let mut entries = Vec::new();
        loop {
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(entries);
            }
            let key = self.string()?;
            self.expect(':')?;
            let value = self.value()?;
            entries.push((key, value));
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn string(&mut self) -> Result<String> {
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.err("expected a quoted string")),
        };
        self.pos += 1;
        let start = self.pos;
        while let Some(&c) = self.chars.get(self.pos) {
            if c == quote {
                let s: String = self.chars[start..self.pos].iter().collect();
                self.pos += 1;
                return Ok(s);
            }
            self.pos += 1;
        }
        Err(self.err("unterminated string"))
    }

    fn value(&mut self) -> Result<PyValue> {
        match self.peek() {
            Some('\'' | '"') => Ok(PyValue::Str(self.string()?)),
            Some('(') => self.tuple(),
            Some(_) => {
                let word = self.word();
                match word.as_str() {
                    "True" => Ok(PyValue::Bool(true)),
                    "False" => Ok(PyValue::Bool(false)),
                    _ => Err(self.err(&format!("unexpected value '{word}'"))),
                }
            }
            None => Err(self.err("unexpected end of header")),
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self
            .chars
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn tuple(&mut self) -> Result<PyValue> {
        self.expect('(')?;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(')') {
                self.pos += 1;
                return Ok(PyValue::Tuple(items));
            }
            let word = self.word();
            // Python 2 era files may write long integers as `3L`.
            let digits = word.strip_suffix('L').unwrap_or(&word);
            let n = digits
                .parse::<usize>()
                .map_err(|_| self.err(&format!("'{word}' is not a dimension")))?;
            items.push(n);
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(')') => {}
                _ => return Err(self.err("expected ',' or ')'")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------

/// Reads a 2-D F16/BF16/F32/F64 tensor from a `.safetensors` file: the named one, or the only
/// one when no name is given.
pub fn read_safetensors(path: &Path, tensor: Option<&str>) -> Result<Embeddings> {
    let bytes = read_file(path)?;
    parse_safetensors(&bytes, tensor)
}

/// Parses the bytes of a `.safetensors` file (see [`read_safetensors`]).
pub fn parse_safetensors(bytes: &[u8], tensor: Option<&str>) -> Result<Embeddings> {
    if bytes.is_empty() {
        return Err(GenMetricsError::Empty { rows: 0, dim: 0 });
    }
    let file =
        SafeTensors::deserialize(bytes).map_err(|e| GenMetricsError::Safetensors(e.to_string()))?;
    let mut names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    names.sort();
    let name = match tensor {
        Some(name) => name.to_string(),
        None => match names.as_slice() {
            [only] => only.clone(),
            [] => {
                return Err(GenMetricsError::Safetensors(
                    "the file holds no tensor".into(),
                ));
            }
            _ => return Err(GenMetricsError::AmbiguousTensor { names }),
        },
    };
    let view = file
        .tensor(&name)
        .map_err(|_| GenMetricsError::TensorNotFound {
            name: name.clone(),
            names: names.clone(),
        })?;
    let (rows, dim) = match view.shape() {
        [rows, dim] => (*rows, *dim),
        other => {
            return Err(GenMetricsError::NotMatrix {
                shape: other.to_vec(),
            });
        }
    };
    if rows == 0 || dim == 0 {
        return Err(GenMetricsError::Empty { rows, dim });
    }
    let (format, size) = match view.dtype() {
        Dtype::F16 => (FloatFormat::F16, 2),
        Dtype::BF16 => (FloatFormat::Bf16, 2),
        Dtype::F32 => (FloatFormat::F32, 4),
        Dtype::F64 => (FloatFormat::F64, 8),
        other => {
            return Err(GenMetricsError::UnsupportedDtype {
                dtype: format!("{other:?}"),
            });
        }
    };
    let kind = NpyKind {
        format,
        size,
        big_endian: false,
    };
    let data = decode_floats(view.data(), kind);
    Embeddings::new(rows, dim, data)
}

/// Writes the set as a single F32 tensor named `name` in a `.safetensors` file.
pub fn write_safetensors(path: &Path, set: &Embeddings, name: &str) -> Result<()> {
    let mut bytes = Vec::with_capacity(set.data.len() * 4);
    for v in &set.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![set.rows, set.dim], &bytes)
        .map_err(|e| GenMetricsError::Safetensors(e.to_string()))?;
    let encoded = safetensors::serialize([(name, view)], None)
        .map_err(|e| GenMetricsError::Safetensors(e.to_string()))?;
    write_file(path, &encoded)
}

// ---------------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------------

/// Reads a CSV file of numbers, one sample per line. A first line with a cell that does not
/// parse as a number is taken as a header and skipped (a header of numbers cannot be told from
/// data). Cells are trimmed; blank lines and lines starting with `#` are ignored.
pub fn read_csv(path: &Path) -> Result<Embeddings> {
    let bytes = read_file(path)?;
    parse_csv(&bytes)
}

/// Parses CSV bytes (see [`read_csv`]).
pub fn parse_csv(bytes: &[u8]) -> Result<Embeddings> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(bytes);
    let mut data = Vec::new();
    let mut dim = 0usize;
    let mut rows = 0usize;
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let more = reader
            .read_record(&mut record)
            .map_err(|e| GenMetricsError::Csv(e.to_string()))?;
        if !more {
            break;
        }
        let line = record.position().map_or(rows + 1, |p| p.line() as usize);
        // Blank lines are skipped by the csv crate; a lone empty field is one too.
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        if first {
            first = false;
            if record.iter().any(|f| f.parse::<f32>().is_err()) {
                // A header line: every later line must parse.
                dim = record.len();
                continue;
            }
        }
        if dim == 0 {
            dim = record.len();
        } else if record.len() != dim {
            return Err(GenMetricsError::CsvRagged {
                line,
                expected: dim,
                found: record.len(),
            });
        }
        for (col, field) in record.iter().enumerate() {
            let value = field.parse::<f32>().map_err(|_| GenMetricsError::CsvCell {
                line,
                column: col + 1,
                text: field.to_string(),
            })?;
            data.push(value);
        }
        rows += 1;
    }
    if rows == 0 {
        return Err(GenMetricsError::Empty { rows: 0, dim });
    }
    Embeddings::new(rows, dim, data)
}

/// Writes the set as CSV, one sample per line, no header.
pub fn write_csv(path: &Path, set: &Embeddings) -> Result<()> {
    let mut text = String::with_capacity(set.data.len() * 12);
    for i in 0..set.rows {
        for (c, v) in set.row(i).iter().enumerate() {
            if c > 0 {
                text.push(',');
            }
            // `{}` prints the shortest text that parses back to the same f32.
            text.push_str(&v.to_string());
        }
        text.push('\n');
    }
    write_file(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rows: usize, dim: usize) -> Embeddings {
        let data = (0..rows * dim)
            .map(|i| (i as f32 * 0.37).sin() * 10.0 + 1e-3 * i as f32)
            .collect();
        Embeddings::new(rows, dim, data).unwrap()
    }

    #[test]
    fn validation_names_row_and_column_of_nan() {
        let mut data = vec![0.0; 12];
        data[7] = f32::NAN;
        match Embeddings::new(3, 4, data) {
            Err(GenMetricsError::NonFinite { row, col, .. }) => assert_eq!((row, col), (1, 3)),
            other => panic!("unexpected {other:?}"),
        }
        let err = Embeddings::new(1, 2, vec![1.0, f32::INFINITY]).unwrap_err();
        assert!(err.to_string().contains("row 0, column 1"), "{err}");
    }

    #[test]
    fn validation_rejects_empty_and_bad_length() {
        assert!(matches!(
            Embeddings::new(0, 4, vec![]),
            Err(GenMetricsError::Empty { .. })
        ));
        assert!(matches!(
            Embeddings::new(2, 3, vec![0.0; 5]),
            Err(GenMetricsError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn npy_round_trip_and_alignment() {
        let set = sample(7, 5);
        let bytes = encode_npy(&set);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(parse_npy(&bytes).unwrap(), set);
    }

    fn npy_bytes(major: u8, header: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = NPY_MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn npy_f64_v2_and_big_endian() {
        let values = [1.5f64, -2.25, 3.0, 4.0, 5.5, -6.0];
        let le: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }\n";
        let set = parse_npy(&npy_bytes(2, header, &le)).unwrap();
        assert_eq!((set.rows, set.dim), (3, 2));
        assert_eq!(set.data, vec![1.5, -2.25, 3.0, 4.0, 5.5, -6.0]);

        let be: Vec<u8> = values
            .iter()
            .flat_map(|v| (*v as f32).to_be_bytes())
            .collect();
        let header = "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3)}";
        let set = parse_npy(&npy_bytes(1, header, &be)).unwrap();
        assert_eq!((set.rows, set.dim), (2, 3));
        assert_eq!(set.data[5], -6.0);
    }

    #[test]
    fn npy_rejects_fortran_order_and_bad_shapes() {
        let payload = vec![0u8; 16];
        let header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }";
        let err = parse_npy(&npy_bytes(1, header, &payload)).unwrap_err();
        assert!(matches!(err, GenMetricsError::NpyFortranOrder));
        assert!(err.to_string().contains("Fortran"), "{err}");

        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }";
        assert!(matches!(
            parse_npy(&npy_bytes(1, header, &payload)),
            Err(GenMetricsError::NotMatrix { .. })
        ));
        let header = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }";
        assert!(matches!(
            parse_npy(&npy_bytes(1, header, &payload)),
            Err(GenMetricsError::UnsupportedDtype { .. })
        ));
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }";
        assert!(matches!(
            parse_npy(&npy_bytes(1, header, &payload)),
            Err(GenMetricsError::Npy(_))
        ));
        assert!(matches!(
            parse_npy(b"not numpy"),
            Err(GenMetricsError::Npy(_))
        ));
        assert!(matches!(parse_npy(b""), Err(GenMetricsError::Empty { .. })));
    }

    #[test]
    fn safetensors_round_trip_and_dtypes() {
        let set = sample(4, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.safetensors");
        write_safetensors(&path, &set, "embeddings").unwrap();
        assert_eq!(read_safetensors(&path, None).unwrap(), set);
        assert_eq!(read_safetensors(&path, Some("embeddings")).unwrap(), set);
        assert!(matches!(
            read_safetensors(&path, Some("nope")),
            Err(GenMetricsError::TensorNotFound { .. })
        ));

        let f16: Vec<u8> = [1.0f32, 2.0, -0.5, 4.0]
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = [1.0f32, 2.0, -0.5, 8.0]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let f64s: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            (
                "a",
                safetensors::tensor::TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap(),
            ),
            (
                "b",
                safetensors::tensor::TensorView::new(Dtype::BF16, vec![2, 2], &bf16).unwrap(),
            ),
            (
                "c",
                safetensors::tensor::TensorView::new(Dtype::F64, vec![1, 2], &f64s).unwrap(),
            ),
            (
                "d",
                safetensors::tensor::TensorView::new(Dtype::F64, vec![2], &f64s).unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(views, None).unwrap();
        assert!(matches!(
            parse_safetensors(&bytes, None),
            Err(GenMetricsError::AmbiguousTensor { .. })
        ));
        assert_eq!(
            parse_safetensors(&bytes, Some("a")).unwrap().data,
            vec![1.0, 2.0, -0.5, 4.0]
        );
        assert_eq!(parse_safetensors(&bytes, Some("b")).unwrap().data[3], 8.0);
        assert_eq!(parse_safetensors(&bytes, Some("c")).unwrap().dim, 2);
        assert!(matches!(
            parse_safetensors(&bytes, Some("d")),
            Err(GenMetricsError::NotMatrix { .. })
        ));
        assert!(matches!(
            parse_safetensors(b"garbage!", None),
            Err(GenMetricsError::Safetensors(_))
        ));
    }

    #[test]
    fn csv_header_detection_and_errors() {
        let set = parse_csv(b"a,b,c\n1,2,3\n4, 5 ,6e-1\n").unwrap();
        assert_eq!((set.rows, set.dim), (2, 3));
        assert_eq!(set.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 0.6]);
        let set = parse_csv(b"1,2\n3,4\n\n").unwrap();
        assert_eq!((set.rows, set.dim), (2, 2));

        match parse_csv(b"1,2\n3,x\n") {
            Err(GenMetricsError::CsvCell { line, column, text }) => {
                assert_eq!((line, column, text.as_str()), (2, 2, "x"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse_csv(b"1,2\n3\n"),
            Err(GenMetricsError::CsvRagged { line: 2, .. })
        ));
        assert!(matches!(parse_csv(b""), Err(GenMetricsError::Empty { .. })));
        assert!(matches!(
            parse_csv(b"x,y\n"),
            Err(GenMetricsError::Empty { .. })
        ));
        assert!(matches!(
            parse_csv(b"1,nan\n"),
            Err(GenMetricsError::NonFinite { row: 0, col: 1, .. })
        ));
    }

    #[test]
    fn raw_round_trip_and_truncation() {
        let set = sample(3, 4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.f32");
        write_raw_f32(&path, &set).unwrap();
        assert_eq!(load_embeddings(&path, Some(4), None).unwrap(), set);
        assert!(matches!(
            load_embeddings(&path, None, None),
            Err(GenMetricsError::MissingDim { .. })
        ));
        let err = load_embeddings(&path, Some(5), None).unwrap_err();
        assert!(
            matches!(
                err,
                GenMetricsError::Truncated {
                    len: 48,
                    row_bytes: 20
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            load_embeddings(&path, Some(4), None),
            Err(GenMetricsError::Empty { .. })
        ));
    }

    #[test]
    fn dispatch_by_extension_round_trips() {
        let set = sample(6, 3);
        let dir = tempfile::tempdir().unwrap();
        let npy = dir.path().join("e.NPY");
        write_npy(&npy, &set).unwrap();
        assert_eq!(load_embeddings(&npy, None, None).unwrap(), set);
        assert!(matches!(
            load_embeddings(&npy, Some(4), None),
            Err(GenMetricsError::FileDimMismatch { .. })
        ));
        let csv = dir.path().join("e.csv");
        write_csv(&csv, &set).unwrap();
        assert_eq!(load_embeddings(&csv, None, None).unwrap(), set);
        let st = dir.path().join("e.safetensors");
        write_safetensors(&st, &set, "x").unwrap();
        assert_eq!(load_embeddings(&st, Some(3), Some("x")).unwrap(), set);
        let missing = dir.path().join("absent.npy");
        assert!(matches!(
            load_embeddings(&missing, None, None),
            Err(GenMetricsError::Io { .. })
        ));
    }
}
