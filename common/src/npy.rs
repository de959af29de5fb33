//! The `.npy` cache format: one `float32` array `[400, T]` per spectrogram, as the original
//! project's parquet → `.npy` conversion wrote them; `numpy.load` reads every file.

use bytes::Bytes;
use ndarray::Array2;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::error::{Error, Location, Result};
use crate::hms::spectrogram::{FEATURES, Spectrogram};

/// Encodes a spectrogram as a `.npy` file (`<f4`, C order, shape `(400, T)`).
pub fn encode(s: &Spectrogram) -> Bytes {
    let arr =
        ndarray::ArrayView2::from_shape((FEATURES, s.rows), &s.data).expect("data is [400, rows]");
    let mut buf = Vec::with_capacity(s.data.len() * 4 + 128);
    arr.write_npy(&mut buf).expect("in-memory write");
    Bytes::from(buf)
}

/// Decodes a cached `.npy` spectrogram, checking dtype and the 400-row shape.
pub fn decode(bytes: &[u8], file: &str) -> Result<Spectrogram> {
    let arr = Array2::<f32>::read_npy(bytes).map_err(|e| {
        Error::invalid(
            Location::file(file),
            format!("not a float32 2-D .npy array: {e}"),
        )
    })?;
    let (features, rows) = arr.dim();
    if features != FEATURES {
        return Err(Error::invalid(
            Location::file(file),
            format!("shape ({features}, {rows}), expected (400, T)"),
        ));
    }
    let data = if arr.is_standard_layout() {
        arr.into_raw_vec_and_offset().0
    } else {
        arr.iter().copied().collect()
    };
    Ok(Spectrogram { rows, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let s = Spectrogram {
            rows: 3,
            data: (0..1200).map(|i| i as f32 * 0.5).collect(),
        };
        let bytes = encode(&s);
        assert!(bytes.starts_with(b"\x93NUMPY"));
        assert_eq!(decode(&bytes, "x.npy").unwrap(), s);
    }

    #[test]
    fn wrong_shape_or_garbage_is_named() {
        let e = decode(b"garbage", "c/1.npy").unwrap_err().to_string();
        assert!(e.contains("c/1.npy"), "{e}");
        let small = Spectrogram {
            rows: 1,
            data: vec![0.0; 400],
        };
        let mut buf = Vec::new();
        ndarray::ArrayView2::from_shape((20, 20), &small.data)
            .unwrap()
            .write_npy(&mut buf)
            .unwrap();
        let e = decode(&buf, "c/2.npy").unwrap_err().to_string();
        assert!(e.contains("(20, 20)"), "{e}");
    }
}
