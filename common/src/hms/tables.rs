//! `train.csv`, `test.csv` and submission CSVs: strict readers and exact writers.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use crate::error::{Error, Location, Result};
use crate::hms::{Class, N_CLASSES, VOTE_COLUMNS};

/// `train.csv` columns, in order.
pub const TRAIN_COLUMNS: [&str; 15] = [
    "eeg_id",
    "eeg_sub_id",
    "eeg_label_offset_seconds",
    "spectrogram_id",
    "spectrogram_sub_id",
    "spectrogram_label_offset_seconds",
    "label_id",
    "patient_id",
    "expert_consensus",
    "seizure_vote",
    "lpd_vote",
    "gpd_vote",
    "lrda_vote",
    "grda_vote",
    "other_vote",
];

/// `test.csv` columns, in order.
pub const TEST_COLUMNS: [&str; 3] = ["spectrogram_id", "eeg_id", "patient_id"];

/// One labelled row of `train.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRow {
    pub eeg_id: i64,
    pub eeg_sub_id: i64,
    pub eeg_label_offset_seconds: f64,
    pub spectrogram_id: i64,
    pub spectrogram_sub_id: i64,
    pub spectrogram_label_offset_seconds: f64,
    pub label_id: i64,
    pub patient_id: i64,
    pub expert_consensus: Class,
    /// Raw vote counts in [`VOTE_COLUMNS`] order (non-negative, at least one positive).
    pub votes: [f64; N_CLASSES],
}

/// One row of `test.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRow {
    pub spectrogram_id: i64,
    pub eeg_id: i64,
    pub patient_id: i64,
}

/// One row of a submission (or of a solution): an `eeg_id` and six values in vote-column order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbRow {
    pub eeg_id: i64,
    pub values: [f64; N_CLASSES],
}

/// A parsed CSV: header positions plus records with their line numbers.
struct Table {
    file: String,
    header: Vec<String>,
    records: Vec<(u64, csv::StringRecord)>,
}

impl Table {
    fn parse(bytes: &[u8], file: &str) -> Result<Self> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(bytes);
        let loc = || Location::file(file);
        let header = rdr
            .headers()
            .map_err(|e| Error::invalid(loc().line(1), format!("unreadable header: {e}")))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').to_string())
            .collect::<Vec<_>>();
        if header.iter().all(|h| h.is_empty()) {
            return Err(Error::invalid(loc(), "empty file: no header row"));
        }
        let mut records = Vec::new();
        for rec in rdr.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                Error::invalid(loc().line(line), format!("malformed CSV: {e}"))
            })?;
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            records.push((line, rec));
        }
        Ok(Self {
            file: file.to_string(),
            header,
            records,
        })
    }

    /// Requires exactly `expected`, in order, naming the first difference.
    fn require_exact(&self, expected: &[&str]) -> Result<()> {
        let loc = Location::file(&self.file).line(1);
        for want in expected {
            if !self.header.iter().any(|h| h == want) {
                return Err(Error::invalid(loc.field(*want), "missing column"));
            }
        }
        for got in &self.header {
            if !expected.contains(&got.as_str()) {
                return Err(Error::invalid(
                    loc.field(got.clone()),
                    format!(
                        "unexpected column; expected exactly: {}",
                        expected.join(",")
                    ),
                ));
            }
        }
        for (i, (got, want)) in self.header.iter().zip(expected).enumerate() {
            if got != want {
                return Err(Error::invalid(
                    loc.field(got.clone()),
                    format!(
                        "column {} should be {want:?}; expected order: {}",
                        i + 1,
                        expected.join(",")
                    ),
                ));
            }
        }
        if self.header.len() != expected.len() {
            return Err(Error::invalid(loc, "duplicate columns in header"));
        }
        Ok(())
    }

    /// Positions of `wanted` columns (any order, extra columns allowed).
    fn positions(&self, wanted: &[&str]) -> Result<Vec<usize>> {
        wanted
            .iter()
            .map(|w| {
                self.header.iter().position(|h| h == w).ok_or_else(|| {
                    Error::invalid(
                        Location::file(&self.file).line(1).field(*w),
                        "missing column",
                    )
                })
            })
            .collect()
    }

    fn field<'a>(
        &self,
        line: u64,
        rec: &'a csv::StringRecord,
        pos: usize,
        name: &str,
    ) -> Result<&'a str> {
        rec.get(pos).ok_or_else(|| {
            Error::invalid(
                Location::file(&self.file).line(line).field(name),
                "missing value (short row)",
            )
        })
    }

    fn parse_num<T: FromStr>(
        &self,
        line: u64,
        rec: &csv::StringRecord,
        pos: usize,
        name: &str,
    ) -> Result<T> {
        let raw = self.field(line, rec, pos, name)?;
        raw.trim().parse::<T>().map_err(|_| {
            Error::invalid(
                Location::file(&self.file).line(line).field(name),
                format!("not a number: {raw:?}"),
            )
        })
    }

    /// Integer ids; pandas writes integer columns as `123`, but accept `123.0` too.
    fn parse_id(&self, line: u64, rec: &csv::StringRecord, pos: usize, name: &str) -> Result<i64> {
        if let Ok(v) = self.parse_num::<i64>(line, rec, pos, name) {
            return Ok(v);
        }
        let f = self.parse_num::<f64>(line, rec, pos, name)?;
        if f.fract() == 0.0 && f.is_finite() && f.abs() < 9.0e15 {
            Ok(f as i64)
        } else {
            Err(Error::invalid(
                Location::file(&self.file).line(line).field(name),
                format!("not an integer id: {f}"),
            ))
        }
    }

    /// A finite, non-negative float.
    fn parse_nonneg(
        &self,
        line: u64,
        rec: &csv::StringRecord,
        pos: usize,
        name: &str,
    ) -> Result<f64> {
        let v = self.parse_num::<f64>(line, rec, pos, name)?;
        if !v.is_finite() || v < 0.0 {
            return Err(Error::invalid(
                Location::file(&self.file).line(line).field(name),
                format!("must be a finite, non-negative number, got {v}"),
            ));
        }
        Ok(v)
    }

    fn check_width(&self, line: u64, rec: &csv::StringRecord) -> Result<()> {
        if rec.len() != self.header.len() {
            return Err(Error::invalid(
                Location::file(&self.file).line(line),
                format!("{} fields, header has {}", rec.len(), self.header.len()),
            ));
        }
        Ok(())
    }
}

/// Parses and validates `train.csv` (see HMS.md): exact columns, numeric fields, known
/// consensus classes, non-negative votes with a positive total, unique `label_id`.
pub fn parse_train_csv(bytes: &[u8], file: &str) -> Result<Vec<TrainRow>> {
    let t = Table::parse(bytes, file)?;
    t.require_exact(&TRAIN_COLUMNS)?;
    let mut seen = HashMap::new();
    let mut rows = Vec::with_capacity(t.records.len());
    for (line, rec) in &t.records {
        let line = *line;
        t.check_width(line, rec)?;
        let id = |i: usize| t.parse_id(line, rec, i, TRAIN_COLUMNS[i]);
        let mut votes = [0.0; N_CLASSES];
        for (c, v) in votes.iter_mut().enumerate() {
            *v = t.parse_nonneg(line, rec, 9 + c, VOTE_COLUMNS[c])?;
        }
        let loc = || Location::file(file).line(line);
        if votes.iter().sum::<f64>() <= 0.0 {
            return Err(Error::invalid(
                loc(),
                "all six vote columns are 0: the row has no label",
            ));
        }
        let consensus = t.field(line, rec, 8, "expert_consensus")?;
        let expert_consensus = Class::from_str(consensus)
            .map_err(|m| Error::invalid(loc().field("expert_consensus"), m))?;
        let row = TrainRow {
            eeg_id: id(0)?,
            eeg_sub_id: id(1)?,
            eeg_label_offset_seconds: t.parse_nonneg(line, rec, 2, TRAIN_COLUMNS[2])?,
            spectrogram_id: id(3)?,
            spectrogram_sub_id: id(4)?,
            spectrogram_label_offset_seconds: t.parse_nonneg(line, rec, 5, TRAIN_COLUMNS[5])?,
            label_id: id(6)?,
            patient_id: id(7)?,
            expert_consensus,
            votes,
        };
        if let Some(first) = seen.insert(row.label_id, line) {
            return Err(Error::invalid(
                loc().field("label_id"),
                format!(
                    "duplicate label_id {} (first on line {first})",
                    row.label_id
                ),
            ));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(Error::invalid(Location::file(file), "no data rows"));
    }
    Ok(rows)
}

/// Writes `train.csv` rows in the Kaggle layout (pandas' number formatting).
pub fn write_train_csv(rows: &[TrainRow]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(TRAIN_COLUMNS).expect("in-memory write");
    for r in rows {
        let mut rec = vec![
            r.eeg_id.to_string(),
            r.eeg_sub_id.to_string(),
            format!("{:?}", r.eeg_label_offset_seconds),
            r.spectrogram_id.to_string(),
            r.spectrogram_sub_id.to_string(),
            format!("{:?}", r.spectrogram_label_offset_seconds),
            r.label_id.to_string(),
            r.patient_id.to_string(),
            r.expert_consensus.name().to_string(),
        ];
        rec.extend(r.votes.iter().map(|v| format!("{}", *v as i64)));
        w.write_record(&rec).expect("in-memory write");
    }
    w.into_inner().expect("in-memory write")
}

/// Copies a CSV's rows unchanged, in input order, with one extra column appended.
/// `values` must have one entry per data row.
pub fn append_column(bytes: &[u8], file: &str, name: &str, values: &[String]) -> Result<Vec<u8>> {
    let t = Table::parse(bytes, file)?;
    if t.records.len() != values.len() {
        return Err(Error::invalid(
            Location::file(file),
            format!(
                "{} rows but {} values for column {name}",
                t.records.len(),
                values.len()
            ),
        ));
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = t.header.clone();
    header.push(name.to_string());
    w.write_record(&header).expect("in-memory write");
    for ((_, rec), v) in t.records.iter().zip(values) {
        let mut rec = rec.clone();
        rec.push_field(v);
        w.write_record(&rec).expect("in-memory write");
    }
    Ok(w.into_inner().expect("in-memory write"))
}

/// Parses and validates `test.csv`.
pub fn parse_test_csv(bytes: &[u8], file: &str) -> Result<Vec<TestRow>> {
    let t = Table::parse(bytes, file)?;
    t.require_exact(&TEST_COLUMNS)?;
    let mut seen = HashSet::new();
    let mut rows = Vec::with_capacity(t.records.len());
    for (line, rec) in &t.records {
        t.check_width(*line, rec)?;
        let row = TestRow {
            spectrogram_id: t.parse_id(*line, rec, 0, TEST_COLUMNS[0])?,
            eeg_id: t.parse_id(*line, rec, 1, TEST_COLUMNS[1])?,
            patient_id: t.parse_id(*line, rec, 2, TEST_COLUMNS[2])?,
        };
        if !seen.insert(row.eeg_id) {
            return Err(Error::invalid(
                Location::file(file).line(*line).field("eeg_id"),
                format!("duplicate eeg_id {}", row.eeg_id),
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Writes `test.csv`.
pub fn write_test_csv(rows: &[TestRow]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(TEST_COLUMNS).expect("in-memory write");
    for r in rows {
        w.write_record([
            r.spectrogram_id.to_string(),
            r.eeg_id.to_string(),
            r.patient_id.to_string(),
        ])
        .expect("in-memory write");
    }
    w.into_inner().expect("in-memory write")
}

/// Reads `eeg_id` and the six vote columns from any CSV that has them (a submission, a
/// solution, an out-of-fold file); other columns are ignored. Values must be finite and
/// non-negative; `eeg_id` must be unique.
pub fn parse_prob_csv(bytes: &[u8], file: &str) -> Result<Vec<ProbRow>> {
    let t = Table::parse(bytes, file)?;
    let mut wanted = vec!["eeg_id"];
    wanted.extend(VOTE_COLUMNS);
    let pos = t.positions(&wanted)?;
    let mut seen = HashMap::new();
    let mut rows = Vec::with_capacity(t.records.len());
    for (line, rec) in &t.records {
        t.check_width(*line, rec)?;
        let eeg_id = t.parse_id(*line, rec, pos[0], "eeg_id")?;
        let mut values = [0.0; N_CLASSES];
        for (c, v) in values.iter_mut().enumerate() {
            *v = t.parse_nonneg(*line, rec, pos[1 + c], VOTE_COLUMNS[c])?;
        }
        if let Some(first) = seen.insert(eeg_id, *line) {
            return Err(Error::invalid(
                Location::file(file).line(*line).field("eeg_id"),
                format!("duplicate eeg_id {eeg_id} (first on line {first})"),
            ));
        }
        rows.push(ProbRow { eeg_id, values });
    }
    if rows.is_empty() {
        return Err(Error::invalid(Location::file(file), "no data rows"));
    }
    Ok(rows)
}

/// Writes a Kaggle submission (`eeg_id` + six `*_vote` probabilities), with optional extra
/// integer columns appended (e.g. `fold` for out-of-fold files).
pub fn write_prob_csv(rows: &[ProbRow], extra: Option<(&str, &[i64])>) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["eeg_id"];
    header.extend(VOTE_COLUMNS);
    if let Some((name, _)) = extra {
        header.push(name);
    }
    w.write_record(&header).expect("in-memory write");
    for (i, r) in rows.iter().enumerate() {
        let mut rec = vec![r.eeg_id.to_string()];
        rec.extend(r.values.iter().map(|v| v.to_string()));
        if let Some((_, vals)) = extra {
            rec.push(vals[i].to_string());
        }
        w.write_record(&rec).expect("in-memory write");
    }
    w.into_inner().expect("in-memory write")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "eeg_id,eeg_sub_id,eeg_label_offset_seconds,spectrogram_id,spectrogram_sub_id,spectrogram_label_offset_seconds,label_id,patient_id,expert_consensus,seizure_vote,lpd_vote,gpd_vote,lrda_vote,grda_vote,other_vote";

    fn csv(rows: &[&str]) -> Vec<u8> {
        let mut s = String::from(HEADER);
        for r in rows {
            s.push('\n');
            s.push_str(r);
        }
        s.push('\n');
        s.into_bytes()
    }

    const ROW1: &str = "1628180742,0,0.0,353733,0,0.0,127492639,42516,Seizure,3,0,0,0,0,0";
    const ROW2: &str = "1628180742,1,6.0,353733,1,6.0,3887563113,42516,Seizure,3,0,0,0,0,0";

    fn err(bytes: &[u8]) -> String {
        parse_train_csv(bytes, "train.csv").unwrap_err().to_string()
    }

    #[test]
    fn parses_kaggle_rows() {
        let rows = parse_train_csv(&csv(&[ROW1, ROW2]), "train.csv").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].label_id, 3887563113);
        assert_eq!(rows[1].spectrogram_label_offset_seconds, 6.0);
        assert_eq!(rows[0].expert_consensus, Class::Seizure);
        assert_eq!(rows[0].votes, [3.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        // Round trip through the writer gives the same bytes.
        assert_eq!(write_train_csv(&rows), csv(&[ROW1, ROW2]));
    }

    #[test]
    fn missing_extra_and_misordered_columns_are_named() {
        let missing = HEADER.replace(",patient_id", "");
        let e = err(format!("{missing}\n").as_bytes());
        assert!(
            e.contains("line 1") && e.contains("\"patient_id\"") && e.contains("missing column"),
            "{e}"
        );

        let extra = format!("{HEADER},note\n");
        let e = err(extra.as_bytes());
        assert!(
            e.contains("\"note\"") && e.contains("unexpected column"),
            "{e}"
        );

        let swapped = HEADER.replace("eeg_id,eeg_sub_id", "eeg_sub_id,eeg_id");
        let e = err(format!("{swapped}\n{ROW1}\n").as_bytes());
        assert!(e.contains("column 1 should be \"eeg_id\""), "{e}");
    }

    #[test]
    fn non_numeric_values_name_line_and_column() {
        let e = err(&csv(&[ROW1, &ROW2.replace(",6.0,353733", ",six,353733")]));
        assert!(
            e.contains("line 3") && e.contains("eeg_label_offset_seconds") && e.contains("\"six\""),
            "{e}"
        );
        let e = err(&csv(&[&ROW1.replace(",42516,", ",p42516,")]));
        assert!(e.contains("line 2") && e.contains("patient_id"), "{e}");
        let e = err(&csv(&[&ROW1.replace("Seizure,3,", "Seizure,NaN,")]));
        assert!(e.contains("seizure_vote") && e.contains("finite"), "{e}");
        let e = err(&csv(&[&ROW1.replace("Seizure,3,", "Seizure,-3,")]));
        assert!(
            e.contains("seizure_vote") && e.contains("non-negative"),
            "{e}"
        );
    }

    #[test]
    fn zero_vote_rows_are_refused() {
        let e = err(&csv(&[ROW1, &ROW2.replace("Seizure,3,", "Seizure,0,")]));
        assert!(
            e.contains("line 3") && e.contains("all six vote columns are 0"),
            "{e}"
        );
    }

    #[test]
    fn unknown_consensus_is_refused() {
        let e = err(&csv(&[&ROW1.replace("Seizure", "Seisure")]));
        assert!(
            e.contains("line 2") && e.contains("expert_consensus") && e.contains("\"Seisure\""),
            "{e}"
        );
    }

    #[test]
    fn duplicate_label_id_is_refused() {
        let e = err(&csv(&[ROW1, &ROW2.replace("3887563113", "127492639")]));
        assert!(
            e.contains("line 3")
                && e.contains("duplicate label_id 127492639")
                && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn short_rows_and_empty_files_are_refused() {
        let e = err(&csv(&["1,0,0.0,2,0,0.0,3,4,Other,0,0"]));
        assert!(e.contains("line 2"), "{e}");
        let e = err(b"");
        assert!(e.contains("train.csv"), "{e}");
        let e = err(format!("{HEADER}\n").as_bytes());
        assert!(e.contains("no data rows"), "{e}");
    }

    #[test]
    fn append_column_keeps_rows_and_order() {
        let out = append_column(
            &csv(&[ROW1, ROW2]),
            "train.csv",
            "fold",
            &["3".into(), "0".into()],
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], format!("{HEADER},fold"));
        assert_eq!(lines[1], format!("{ROW1},3"));
        assert_eq!(lines[2], format!("{ROW2},0"));
    }

    #[test]
    fn prob_csv_roundtrip_and_errors() {
        let rows = vec![ProbRow {
            eeg_id: 7,
            values: [0.5, 0.1, 0.1, 0.1, 0.1, 0.1],
        }];
        let bytes = write_prob_csv(&rows, Some(("fold", &[2])));
        assert_eq!(parse_prob_csv(&bytes, "oof.csv").unwrap(), rows);
        let e = parse_prob_csv(b"eeg_id,seizure_vote\n1,0.5\n", "sub.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sub.csv") && e.contains("lpd_vote") && e.contains("missing column"),
            "{e}"
        );
        let dup = "eeg_id,seizure_vote,lpd_vote,gpd_vote,lrda_vote,grda_vote,other_vote\n1,1,0,0,0,0,0\n1,1,0,0,0,0,0\n";
        let e = parse_prob_csv(dup.as_bytes(), "sub.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("duplicate eeg_id 1"),
            "{e}"
        );
    }

    #[test]
    fn test_csv_exact_columns() {
        let ok = "spectrogram_id,eeg_id,patient_id\n853520,3911565283,6885\n";
        assert_eq!(
            parse_test_csv(ok.as_bytes(), "test.csv").unwrap(),
            vec![TestRow {
                spectrogram_id: 853520,
                eeg_id: 3911565283,
                patient_id: 6885
            }]
        );
        assert_eq!(
            write_test_csv(&parse_test_csv(ok.as_bytes(), "test.csv").unwrap()),
            ok.as_bytes()
        );
        let e = parse_test_csv(b"eeg_id,spectrogram_id,patient_id\n1,2,3\n", "test.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("should be \"spectrogram_id\""), "{e}");
    }
}
