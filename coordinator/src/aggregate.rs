//! The end of a run: the cross-validation score (Kaggle KL over all out-of-fold predictions,
//! per architecture and combined), the ensemble (per architecture the mean of its folds' test
//! predictions; across architectures a weighted mean with weights chosen on the out-of-fold
//! predictions), and the files: `submission.csv`, `submission-<arch>.csv`, `oof.csv`,
//! `report.json` and `cv.svg` (train/valid KL per epoch of every fold and architecture).

use std::collections::{BTreeMap, HashMap};

use hbac_common::ensemble::{TestEnsemble, blend};
use hbac_common::error::Location;
use hbac_common::hms::tables::{self, ProbRow};
use hbac_common::hms::{N_CLASSES, VOTE_COLUMNS};
use hbac_common::metric;
use hbac_common::plot::cv_svg;
use hbac_common::records::{self, ENSEMBLE, JobLine, JobSummary, RunReport};
use hbac_common::storage::Store;
use hbac_common::{Error, Result};

use crate::jobs::{JobDef, JobResult};
use crate::plan::Plan;

/// Step of the grid the architecture weights are searched on.
const WEIGHT_STEP: f64 = 0.05;

/// Out-of-fold predictions of one job, keyed by `label_id`, with the fold.
fn parse_oof(bytes: &[u8], file: &str) -> Result<Vec<(i64, [f64; N_CLASSES], i64)>> {
    let mut r = csv::Reader::from_reader(bytes);
    let header: Vec<String> = r
        .headers()
        .map_err(|e| Error::invalid(Location::file(file), e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::invalid(Location::file(file).field(name), "missing column"))
    };
    let votes: Vec<usize> = VOTE_COLUMNS.iter().map(|c| col(c)).collect::<Result<_>>()?;
    let (label, fold) = (col("label_id")?, col("fold")?);
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let at = |_c: usize, name: &str| Location::file(file).line(i as u64 + 2).field(name);
        let rec = rec.map_err(|e| Error::invalid(at(0, ""), e.to_string()))?;
        let num = |c: usize, name: &str| -> Result<f64> {
            rec.get(c)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| Error::invalid(at(c, name), "not a finite number"))
        };
        let mut p = [0.0; N_CLASSES];
        for (k, &c) in votes.iter().enumerate() {
            p[k] = num(c, VOTE_COLUMNS[k])?;
        }
        rows.push((num(label, "label_id")? as i64, p, num(fold, "fold")? as i64));
    }
    Ok(rows)
}

/// Every weight vector on the simplex grid for `n` architectures.
fn weight_grid(n: usize) -> Vec<Vec<f64>> {
    let steps = (1.0 / WEIGHT_STEP).round() as usize;
    fn rec(n: usize, left: usize, prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if n == 1 {
            prefix.push(left);
            out.push(prefix.clone());
            prefix.pop();
            return;
        }
        for k in 0..=left {
            prefix.push(k);
            rec(n - 1, left - k, prefix, out);
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    rec(n.max(1), steps, &mut Vec::new(), &mut out);
    out.into_iter()
        .map(|v| v.into_iter().map(|k| k as f64 / steps as f64).collect())
        .collect()
}

/// Scores, ensembles and writes the run's files into `out`; returns the report.
pub async fn aggregate(
    plan: &Plan,
    jobs: &[JobDef],
    done: &HashMap<String, JobResult>,
    out: &Store,
) -> Result<RunReport> {
    let data = Store::open(&plan.data)?;
    let train_url = data.url("train.csv");
    let rows = tables::parse_train_csv(&data.get("train.csv").await?, &train_url)?;
    let votes: HashMap<i64, [f64; N_CLASSES]> =
        rows.iter().map(|r| (r.label_id, r.votes)).collect();
    let archs: Vec<String> = plan.archs.iter().map(|(a, _)| a.clone()).collect();

    // Per architecture: OOF by label_id, test predictions by eeg_id (summed over folds).
    let mut oof: Vec<BTreeMap<i64, ([f64; N_CLASSES], i64)>> = vec![BTreeMap::new(); archs.len()];
    let mut test = TestEnsemble::new(&archs);
    let mut lines = Vec::new();
    let mut folds_by_arch: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut curves = Vec::new();
    for job in jobs {
        let r = done.get(&job.id).ok_or_else(|| Error::NotFound {
            url: out.url(&format!("jobs/{}", job.id)),
            note: "no accepted result for this job".into(),
        })?;
        let a = archs.iter().position(|x| *x == job.arch).unwrap_or(0);
        let dir = Store::open(&r.out_url)?;
        let oof_url = dir.url(records::OOF);
        let job_oof = parse_oof(&dir.get(records::OOF).await?, &oof_url)?;
        for (label, p, fold) in &job_oof {
            if !votes.contains_key(label) {
                return Err(Error::invalid(
                    Location::file(&oof_url),
                    format!("label_id {label} is not in {train_url}"),
                ));
            }
            oof[a].insert(*label, (*p, *fold));
        }
        if dir.exists(records::TEST).await? {
            let url = dir.url(records::TEST);
            test.add(
                a,
                &tables::parse_prob_csv(&dir.get(records::TEST).await?, &url)?,
            );
        }
        let fold_kl = score(
            &job_oof.iter().map(|(l, p, _)| (*l, *p)).collect::<Vec<_>>(),
            &votes,
        )?;
        folds_by_arch
            .entry(job.arch.clone())
            .or_default()
            .push(fold_kl);
        if let Ok(m) = dir.get(records::METRICS).await {
            let history = records::parse_metrics_jsonl(&m, &dir.url(records::METRICS))?;
            curves.push((job.arch.clone(), job.fold, history));
        }
        lines.push(JobLine {
            job: job.id.clone(),
            arch: job.arch.clone(),
            fold: job.fold,
            worker: r.worker.clone(),
            attempt: r.attempt,
            out: r.out_url.clone(),
            oof_kl: fold_kl,
            prior_kl: JobSummary::parse(r.summary_json.as_bytes(), &dir.url(records::SUMMARY))
                .ok()
                .map(|s| s.prior_kaggle_kl),
        });
    }

    let by_label: HashMap<i64, &tables::TrainRow> = rows.iter().map(|r| (r.label_id, r)).collect();
    let breakdown = |pred: &mut dyn Iterator<Item = (&i64, &[f64; N_CLASSES])>| {
        metric::per_class(pred.map(|(l, p)| {
            let row = by_label[l];
            (&row.votes, row.expert_consensus, p)
        }))
    };
    let mut cv_by_arch = BTreeMap::new();
    let mut cv_per_eeg = BTreeMap::new();
    let mut per_class = BTreeMap::new();
    for (a, name) in archs.iter().enumerate() {
        let rows: Vec<(i64, [f64; N_CLASSES])> =
            oof[a].iter().map(|(l, (p, _))| (*l, *p)).collect();
        cv_by_arch.insert(name.clone(), score(&rows, &votes)?);
        cv_per_eeg.insert(name.clone(), score_per_eeg(&rows, &by_label)?);
        per_class.insert(
            name.clone(),
            breakdown(&mut oof[a].iter().map(|(l, (p, _))| (l, p))),
        );
    }
    // Weights on the rows every architecture predicted.
    let common: Vec<i64> = oof[0]
        .keys()
        .filter(|l| oof.iter().all(|o| o.contains_key(l)))
        .copied()
        .collect();
    let blended = |w: &[f64]| -> Vec<(i64, [f64; N_CLASSES])> {
        common
            .iter()
            .map(|l| {
                let parts: Vec<&[f64; N_CLASSES]> = oof.iter().map(|o| &o[l].0).collect();
                (*l, blend(&parts, w))
            })
            .collect()
    };
    let mut best: Option<(f64, Vec<f64>)> = None;
    for w in weight_grid(archs.len()) {
        let kl = score(&blended(&w), &votes)?;
        if best.as_ref().is_none_or(|(b, _)| kl < *b - 1e-12) {
            best = Some((kl, w));
        }
    }
    let (cv, weights) = best.unwrap_or((f64::NAN, vec![1.0]));

    // oof.csv (the blend, with fold and label_id), submissions.
    let oof_rows: Vec<(i64, [f64; N_CLASSES])> = blended(&weights);
    per_class.insert(
        ENSEMBLE.to_string(),
        breakdown(&mut oof_rows.iter().map(|(l, p)| (l, p))),
    );
    cv_per_eeg.insert(ENSEMBLE.to_string(), score_per_eeg(&oof_rows, &by_label)?);
    let prob: Vec<ProbRow> = oof_rows
        .iter()
        .map(|(l, p)| ProbRow {
            eeg_id: by_label[l].eeg_id,
            values: *p,
        })
        .collect();
    let labels: Vec<i64> = oof_rows.iter().map(|(l, _)| *l).collect();
    let bytes = tables::write_prob_csv(&prob, Some(("label_id", &labels)));
    out.put("oof.csv", bytes).await?;

    let mut test_rows = 0;
    if test.is_complete() {
        for (arch, rows) in archs.iter().zip(test.per_arch()) {
            out.put(
                &format!("submission-{arch}.csv"),
                tables::write_prob_csv(&rows, None),
            )
            .await?;
        }
        let sub = test.blend(&weights, |arch| out.url(&format!("submission-{arch}.csv")))?;
        test_rows = sub.len();
        out.put("submission.csv", tables::write_prob_csv(&sub, None))
            .await?;
    }
    let stage1: Vec<Option<usize>> = archs
        .iter()
        .map(|a| plan.train(a).and_then(records::stage1_epochs))
        .collect();
    out.put("cv.svg", cv_svg(&archs, &curves, &stage1)).await?;
    let report = RunReport {
        cv_by_arch,
        folds_by_arch,
        archs,
        weights,
        cv,
        oof_rows: oof_rows.len(),
        test_rows,
        jobs: lines,
        per_class,
        cv_per_eeg,
    };
    out.put(
        "report.json",
        serde_json::to_vec_pretty(&report).expect("serialisable"),
    )
    .await?;
    Ok(report)
}

/// Kaggle KL per recording: the predictions of each `eeg_id`'s rows (keyed by label_id)
/// averaged, against those rows' votes summed.
fn score_per_eeg(
    pred: &[(i64, [f64; N_CLASSES])],
    by_label: &HashMap<i64, &tables::TrainRow>,
) -> Result<f64> {
    let mut per_eeg: BTreeMap<i64, ([f64; N_CLASSES], [f64; N_CLASSES], usize)> = BTreeMap::new();
    for (l, p) in pred {
        let row = by_label[l];
        let e = per_eeg
            .entry(row.eeg_id)
            .or_insert(([0.0; N_CLASSES], [0.0; N_CLASSES], 0));
        for (k, (&pk, &vk)) in p.iter().zip(&row.votes).enumerate() {
            e.0[k] += pk;
            e.1[k] += vk;
        }
        e.2 += 1;
    }
    let (solution, submission): (Vec<ProbRow>, Vec<ProbRow>) = per_eeg
        .into_iter()
        .map(|(eeg_id, (p, v, n))| {
            (
                ProbRow { eeg_id, values: v },
                ProbRow {
                    eeg_id,
                    values: p.map(|x| x / n as f64),
                },
            )
        })
        .unzip();
    metric::kaggle_kl(&solution, "train.csv", &submission, "oof.csv")
}

/// Kaggle KL of predictions keyed by label_id against the votes of those rows.
fn score(pred: &[(i64, [f64; N_CLASSES])], votes: &HashMap<i64, [f64; N_CLASSES]>) -> Result<f64> {
    let solution: Vec<ProbRow> = pred
        .iter()
        .map(|(l, _)| ProbRow {
            eeg_id: *l,
            values: votes[l],
        })
        .collect();
    let submission: Vec<ProbRow> = pred
        .iter()
        .map(|(l, p)| ProbRow {
            eeg_id: *l,
            values: *p,
        })
        .collect();
    metric::kaggle_kl(&solution, "train.csv", &submission, "oof.csv")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_eeg_scoring_averages_a_recordings_rows_against_their_summed_votes() {
        use hbac_common::hms::Class;
        let row = |label_id: i64, eeg_id: i64, votes: [f64; N_CLASSES]| tables::TrainRow {
            eeg_id,
            eeg_sub_id: label_id,
            eeg_label_offset_seconds: 0.0,
            spectrogram_id: eeg_id,
            spectrogram_sub_id: 0,
            spectrogram_label_offset_seconds: 0.0,
            label_id,
            patient_id: 1,
            expert_consensus: Class::Seizure,
            votes,
        };
        let rows = [
            row(10, 1, [3.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
            row(11, 1, [1.0, 3.0, 0.0, 0.0, 0.0, 0.0]),
            row(12, 2, [0.0, 0.0, 2.0, 0.0, 0.0, 2.0]),
        ];
        let by_label: HashMap<i64, &tables::TrainRow> =
            rows.iter().map(|r| (r.label_id, r)).collect();
        let pred = [
            (10, [0.7, 0.1, 0.05, 0.05, 0.05, 0.05]),
            (11, [0.3, 0.5, 0.05, 0.05, 0.05, 0.05]),
            (12, [0.1, 0.1, 0.3, 0.1, 0.1, 0.3]),
        ];
        // eeg 1: mean prediction (0.5, 0.3, 0.05 ×4) against votes (4, 4, 0…) / 8;
        // eeg 2: its one row. Kaggle KL = mean over recordings of Σ y ln(y / p).
        let kl1 = 0.5 * (0.5f64 / 0.5).ln() + 0.5 * (0.5f64 / 0.3).ln();
        let kl2 = 0.5 * (0.5f64 / 0.3).ln() * 2.0;
        let got = score_per_eeg(&pred, &by_label).unwrap();
        assert!((got - (kl1 + kl2) / 2.0).abs() < 1e-9, "{got}");
        // Per row it differs: rows 10 and 11 are scored against their own votes.
        let votes = rows.iter().map(|r| (r.label_id, r.votes)).collect();
        assert!((score(&pred, &votes).unwrap() - got).abs() > 1e-3);
    }

    #[test]
    fn the_weight_grid_covers_the_simplex() {
        let g = weight_grid(2);
        assert_eq!(g.len(), 21);
        assert!(
            g.iter()
                .all(|w| (w.iter().sum::<f64>() - 1.0).abs() < 1e-12)
        );
        assert_eq!(weight_grid(1), vec![vec![1.0]]);
        assert_eq!(weight_grid(3).len(), 231);
    }

    #[test]
    fn blend_is_a_normalised_weighted_mean() {
        let a = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let b = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let m = blend(&[&a, &b], &[0.25, 0.75]);
        assert_eq!(m, [0.25, 0.75, 0.0, 0.0, 0.0, 0.0]);
    }

    /// Two architectures whose test predictions cover different eeg_ids: an error naming the
    /// row and the file, not a panic that would end the coordinator's drive task.
    #[tokio::test]
    async fn architectures_that_predicted_different_test_rows_fail_with_the_row_named() {
        use hbac_common::folds::KFold;
        use hbac_common::hms::Class;
        use hbac_common::preprocess::{LabelMode, SampleSelection};
        let tmp = tempfile::tempdir().unwrap();
        let root = |p: &str| tmp.path().join(p).display().to_string();
        let rows: Vec<tables::TrainRow> = (0..4)
            .map(|i| tables::TrainRow {
                eeg_id: 100 + i,
                eeg_sub_id: 0,
                eeg_label_offset_seconds: 0.0,
                spectrogram_id: 200 + i,
                spectrogram_sub_id: 0,
                spectrogram_label_offset_seconds: 0.0,
                label_id: 300 + i,
                patient_id: i,
                expert_consensus: Class::Seizure,
                votes: [3.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            })
            .collect();
        let data = Store::create(&root("data")).unwrap();
        data.put("train.csv", tables::write_train_csv(&rows))
            .await
            .unwrap();
        let p = |eeg_id| ProbRow {
            eeg_id,
            values: [0.5, 0.1, 0.1, 0.1, 0.1, 0.1],
        };
        let mut jobs = Vec::new();
        let mut done = HashMap::new();
        for (arch, test_ids) in [("a", [7, 8]), ("b", [7, 9])] {
            let id = format!("{arch}-fold0");
            let dir = Store::create(&root(&id)).unwrap();
            let oof: Vec<ProbRow> = rows.iter().map(|r| p(r.eeg_id)).collect();
            let labels: Vec<i64> = rows.iter().map(|r| r.label_id).collect();
            let folds = vec![0; rows.len()];
            let mut csv = tables::write_prob_csv(&oof, Some(("label_id", &labels)));
            // oof.csv carries the fold too: rebuild it with both columns.
            let text = String::from_utf8(csv).unwrap();
            let mut lines = text.lines();
            let mut fixed = format!("{},fold\n", lines.next().unwrap());
            for (line, f) in lines.zip(&folds) {
                fixed.push_str(&format!("{line},{f}\n"));
            }
            csv = fixed.into_bytes();
            dir.put(records::OOF, csv).await.unwrap();
            let test: Vec<ProbRow> = test_ids.iter().map(|i| p(*i)).collect();
            dir.put(records::TEST, tables::write_prob_csv(&test, None))
                .await
                .unwrap();
            jobs.push(JobDef {
                id: id.clone(),
                arch: arch.into(),
                fold: 0,
            });
            done.insert(
                id.clone(),
                JobResult {
                    lease_id: "l".into(),
                    out_url: root(&id),
                    summary_json: "{}".into(),
                    attempt: 1,
                    worker: "w".into(),
                },
            );
        }
        let plan = Plan {
            data: root("data"),
            cache: root("cache"),
            out: root("run"),
            kfold: KFold {
                k: 2,
                shuffle: true,
                seed: Some(42),
            },
            selection: SampleSelection::FirstPerSpectrogram,
            labels: LabelMode::Votes,
            archs: vec![
                ("a".into(), serde_json::json!({})),
                ("b".into(), serde_json::json!({})),
            ],
            io_concurrency: 1,
        };
        let out = Store::create(&root("run")).unwrap();
        let err = aggregate(&plan, &jobs, &done, &out)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("eeg_id 8") && err.contains("submission-b.csv"),
            "{err}"
        );
        assert!(!out.exists("submission.csv").await.unwrap());
        assert!(!out.exists("report.json").await.unwrap());
    }
}
