//! Spectrogram and EEG parquet files.
//!
//! A spectrogram file has a `time` column and 400 float power columns: the chains LL, RL, LP,
//! RP × 100 frequency bins named `LL_0.59` … `RP_19.92`, one row every 2 s. Reading one yields
//! the reference pipeline's array: NaN → 0, `time` dropped, transposed to `[400, T]` `f32`.

use std::sync::{Arc, OnceLock};

use arrow_array::{Array, ArrayRef, Float32Array, Float64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Location, Result};

/// The four bipolar chains, in column order.
pub const CHAINS: [&str; 4] = ["LL", "RL", "LP", "RP"];
/// Frequency bins per chain.
pub const BINS: usize = 100;
/// Power columns (and rows of the transposed array).
pub const FEATURES: usize = CHAINS.len() * BINS;
/// Rows (2 s each) in a 10-minute window: the model's time axis.
pub const WINDOW: usize = 300;
/// Seconds per spectrogram row.
pub const SECONDS_PER_ROW: f64 = 2.0;

/// EEG columns, in order (200 Hz samples).
pub const EEG_COLUMNS: [&str; 20] = [
    "Fp1", "F3", "C3", "P3", "F7", "T3", "T5", "O1", "Fz", "Cz", "Pz", "Fp2", "F4", "C4", "P4",
    "F8", "T4", "T6", "O2", "EKG",
];

/// The label of frequency bin `k` (0–99): `(k + 3) × 0.1953125` Hz, rounded half-up to two
/// decimals, trailing zeros dropped (`0.59`, `3.13`, `4.1`, `12.5`).
pub fn bin_label(k: usize) -> String {
    // (k + 3) × 19.53125 is exact in binary, so the half-up rounding of the cents is exact too.
    let cents = ((k as f64 + 3.0) * 19.53125 + 0.5).floor() as u64;
    let (whole, frac) = (cents / 100, cents % 100);
    match frac {
        0 => whole.to_string(),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

/// The 400 power column names, in file order.
pub fn power_columns() -> &'static [String] {
    static COLS: OnceLock<Vec<String>> = OnceLock::new();
    COLS.get_or_init(|| {
        CHAINS
            .iter()
            .flat_map(|c| (0..BINS).map(move |k| format!("{c}_{}", bin_label(k))))
            .collect()
    })
}

/// A decoded spectrogram: `[FEATURES, rows]` row-major, NaN already replaced by 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrogram {
    /// Number of 2-second rows (the time length T).
    pub rows: usize,
    /// `data[f * rows + t]` is power of feature `f` at time row `t`.
    pub data: Vec<f32>,
}

impl Spectrogram {
    /// Rows `[start, end)` of every feature (`end` is clamped to the file's length).
    pub fn crop(&self, start: usize, end: usize) -> Spectrogram {
        let end = end.min(self.rows);
        let start = start.min(end);
        let data = (0..self.data.len() / self.rows.max(1))
            .flat_map(|f| &self.data[f * self.rows + start..f * self.rows + end])
            .copied()
            .collect();
        Spectrogram {
            rows: end - start,
            data,
        }
    }
}

pub(crate) fn open(bytes: Bytes, file: &str) -> Result<ParquetRecordBatchReaderBuilder<Bytes>> {
    if bytes.is_empty() {
        return Err(Error::invalid(
            Location::file(file),
            "empty file (0 bytes), not parquet",
        ));
    }
    ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| {
        Error::invalid(
            Location::file(file),
            format!("not a readable parquet file: {e}"),
        )
    })
}

/// Checks names (exact set and order) and float types.
pub(crate) fn check_columns(schema: &Schema, expected: &[&str], file: &str) -> Result<()> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let loc = || Location::file(file);
    if let Some(missing) = expected.iter().find(|e| !names.contains(e)) {
        return Err(Error::invalid(
            loc().field(*missing),
            format!("missing column ({} columns in file)", names.len()),
        ));
    }
    if let Some(extra) = names.iter().find(|n| !expected.contains(n)) {
        return Err(Error::invalid(loc().field(*extra), "unexpected column"));
    }
    if names.len() != expected.len() {
        return Err(Error::invalid(loc(), "duplicate column names"));
    }
    if let Some((i, (got, want))) = names
        .iter()
        .zip(expected)
        .enumerate()
        .find(|(_, (g, w))| g != w)
    {
        return Err(Error::invalid(
            loc().field(*got),
            format!("column {i} should be {want:?} (columns out of order)"),
        ));
    }
    Ok(())
}

pub(crate) fn check_float(field: &Field, file: &str) -> Result<()> {
    match field.data_type() {
        DataType::Float32 | DataType::Float64 => Ok(()),
        other => Err(Error::invalid(
            Location::file(file).field(field.name()),
            format!("expected a float column, found {other}"),
        )),
    }
}

/// Appends a float column's values to `out`, NaN and nulls → 0 (pandas writes missing values
/// as NaN; other writers may use nulls).
fn push_values(col: &ArrayRef, out: &mut Vec<f32>) {
    let start = out.len();
    let clean = |v: f32| if v.is_nan() { 0.0 } else { v };
    if let Some(a) = col.as_any().downcast_ref::<Float32Array>() {
        out.extend(a.values().iter().map(|&v| clean(v)));
    } else if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
        out.extend(a.values().iter().map(|&v| clean(v as f32)));
    }
    if let Some(nulls) = col.nulls() {
        for i in (0..nulls.len()).filter(|&i| nulls.is_null(i)) {
            out[start + i] = 0.0;
        }
    }
}

/// Decodes a spectrogram parquet file to `[400, T]` with NaN → 0. Refuses files that are not
/// parquet, have the wrong columns, non-float power columns, or fewer than [`WINDOW`] rows.
pub fn read_spectrogram(bytes: Bytes, file: &str) -> Result<Spectrogram> {
    let builder = open(bytes, file)?;
    let mut expected: Vec<&str> = vec!["time"];
    expected.extend(power_columns().iter().map(String::as_str));
    check_columns(builder.schema(), &expected, file)?;
    for f in builder.schema().fields().iter().skip(1) {
        check_float(f, file)?;
    }
    let rows = builder.metadata().file_metadata().num_rows() as usize;
    if rows == 0 {
        return Err(Error::invalid(Location::file(file), "no rows"));
    }
    if rows < WINDOW {
        return Err(Error::invalid(
            Location::file(file),
            format!(
                "{rows} rows ({} s); HMS spectrograms have at least {WINDOW} (10 minutes)",
                rows * 2
            ),
        ));
    }
    let reader = builder
        .with_batch_size(rows)
        .build()
        .map_err(|e| Error::invalid(Location::file(file), format!("unreadable parquet: {e}")))?;
    // Column-major per batch; concatenate batches per feature afterwards.
    let mut per_feature: Vec<Vec<f32>> = (0..FEATURES).map(|_| Vec::with_capacity(rows)).collect();
    for batch in reader {
        let batch = batch.map_err(|e| {
            Error::invalid(Location::file(file), format!("corrupt parquet data: {e}"))
        })?;
        for (f, col) in batch.columns().iter().skip(1).enumerate() {
            push_values(col, &mut per_feature[f]);
        }
    }
    let mut data = Vec::with_capacity(FEATURES * rows);
    for (f, v) in per_feature.into_iter().enumerate() {
        if v.len() != rows {
            return Err(Error::invalid(
                Location::file(file).field(&power_columns()[f]),
                format!("{} values, file metadata says {rows} rows", v.len()),
            ));
        }
        data.extend(v);
    }
    Ok(Spectrogram { rows, data })
}

/// Writes a spectrogram parquet file the way Kaggle's look: `time` (odd seconds, as pandas
/// writes them) then the 400 power columns as float32. `values` is `[T, 400]` row-major and may
/// hold NaN.
pub fn write_spectrogram(values: &[f32], rows: usize) -> Result<Bytes> {
    assert_eq!(values.len(), rows * FEATURES, "values must be [rows, 400]");
    let mut fields = vec![Field::new("time", DataType::Float64, false)];
    fields.extend(
        power_columns()
            .iter()
            .map(|n| Field::new(n, DataType::Float32, true)),
    );
    let mut cols: Vec<ArrayRef> = vec![Arc::new(Float64Array::from_iter_values(
        (0..rows).map(|t| (2 * t + 1) as f64),
    ))];
    for f in 0..FEATURES {
        cols.push(Arc::new(Float32Array::from_iter_values(
            (0..rows).map(|t| values[t * FEATURES + f]),
        )));
    }
    write_batch(Schema::new(fields), cols)
}

/// Writes an EEG parquet file: the 20 [`EEG_COLUMNS`] as float32, `values` `[T, 20]`.
pub fn write_eeg(values: &[f32], rows: usize) -> Result<Bytes> {
    let n = EEG_COLUMNS.len();
    assert_eq!(values.len(), rows * n, "values must be [rows, 20]");
    let fields: Vec<Field> = EEG_COLUMNS
        .iter()
        .map(|c| Field::new(*c, DataType::Float32, true))
        .collect();
    let cols: Vec<ArrayRef> = (0..n)
        .map(|c| {
            Arc::new(Float32Array::from_iter_values(
                (0..rows).map(|t| values[t * n + c]),
            )) as ArrayRef
        })
        .collect();
    write_batch(Schema::new(fields), cols)
}

fn write_batch(schema: Schema, cols: Vec<ArrayRef>) -> Result<Bytes> {
    let schema = Arc::new(schema);
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Storage {
        url: "<parquet encoder>".into(),
        detail: e.to_string(),
    })?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut buf = Vec::new();
    let enc = |e: parquet::errors::ParquetError| Error::Storage {
        url: "<parquet encoder>".into(),
        detail: e.to_string(),
    };
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props)).map_err(enc)?;
    w.write(&batch).map_err(enc)?;
    w.close().map_err(enc)?;
    Ok(Bytes::from(buf))
}

/// Checks an EEG parquet file's schema (20 float columns in HMS order); returns its row count.
pub fn check_eeg(bytes: Bytes, file: &str) -> Result<usize> {
    let builder = open(bytes, file)?;
    check_columns(builder.schema(), &EEG_COLUMNS, file)?;
    for f in builder.schema().fields() {
        check_float(f, file)?;
    }
    Ok(builder.metadata().file_metadata().num_rows() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_keeps_the_rows_of_every_feature() {
        // 3 features × 5 rows, value = 10 f + t.
        let spec = Spectrogram {
            rows: 5,
            data: (0..3)
                .flat_map(|f| (0..5).map(move |t| (10 * f + t) as f32))
                .collect(),
        };
        let c = spec.crop(1, 3);
        assert_eq!(c.rows, 2);
        assert_eq!(c.data, [1.0, 2.0, 11.0, 12.0, 21.0, 22.0]);
        assert_eq!(spec.crop(3, 99).data, [3.0, 4.0, 13.0, 14.0, 23.0, 24.0]);
        assert_eq!(spec.crop(0, 5), spec);
    }

    #[test]
    fn column_names_match_kaggle() {
        let cols = power_columns();
        assert_eq!(cols.len(), 400);
        assert_eq!(&cols[..3], ["LL_0.59", "LL_0.78", "LL_0.98"]);
        assert!(cols.contains(&"LL_4.1".to_string()) && cols.contains(&"LL_4.3".to_string()));
        for n in ["LL_3.13", "LL_9.38", "LL_15.63", "LL_8.2", "LL_12.5"] {
            assert!(cols.contains(&n.to_string()), "{n}");
        }
        assert_eq!(cols[100], "RL_0.59");
        assert_eq!(cols[399], "RP_19.92");
    }

    fn synthetic(rows: usize) -> Vec<f32> {
        (0..rows * FEATURES).map(|i| i as f32).collect()
    }

    #[test]
    fn roundtrip_transposes_and_zeroes_nan() {
        let rows = 301;
        let mut v = synthetic(rows);
        v[5] = f32::NAN; // t = 0, feature 5
        let bytes = write_spectrogram(&v, rows).unwrap();
        let s = read_spectrogram(bytes, "x.parquet").unwrap();
        assert_eq!(s.rows, rows);
        assert_eq!(s.data[5 * rows], 0.0);
        assert_eq!(s.data[7 * rows + 2], v[2 * FEATURES + 7]);
        assert_eq!(s.data[399 * rows + 300], v[300 * FEATURES + 399]);
    }

    #[test]
    fn bad_files_are_named() {
        let e = read_spectrogram(Bytes::new(), "a/1.parquet")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/1.parquet") && e.contains("empty"), "{e}");
        let e = read_spectrogram(Bytes::from_static(b"PAR1 not really"), "a/2.parquet")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a/2.parquet") && e.contains("not a readable parquet"),
            "{e}"
        );
        let short = write_spectrogram(&synthetic(120), 120).unwrap();
        let e = read_spectrogram(short, "a/3.parquet")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a/3.parquet") && e.contains("120 rows"), "{e}");
        let eeg = write_eeg(&vec![0.0; 20 * 10], 10).unwrap();
        let e = read_spectrogram(eeg, "a/4.parquet")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a/4.parquet") && e.contains("\"time\"") && e.contains("missing column"),
            "{e}"
        );
    }

    #[test]
    fn eeg_schema_is_checked() {
        let eeg = write_eeg(&vec![0.5; 20 * 10], 10).unwrap();
        assert_eq!(check_eeg(eeg, "e.parquet").unwrap(), 10);
        let spec = write_spectrogram(&synthetic(300), 300).unwrap();
        let e = check_eeg(spec, "e.parquet").unwrap_err().to_string();
        assert!(
            e.contains("e.parquet") && e.contains("missing column"),
            "{e}"
        );
    }
}
