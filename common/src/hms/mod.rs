//! The Kaggle HMS file formats, exactly as published, with validation that names the file,
//! line and column of every problem.
//!
//! * [`tables`] — `train.csv`, `test.csv`, `sample_submission.csv`/submissions;
//! * [`spectrogram`] — spectrogram parquet (`time` + 400 named power columns) and EEG parquet;
//! * [`eeg`] — raw EEG windows → the public reference's mel spectrograms (librosa-exact).

pub mod eeg;
pub mod spectrogram;
pub mod tables;

use std::fmt;
use std::str::FromStr;

/// The six patterns, in the order of the vote columns.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Class {
    Seizure,
    Lpd,
    Gpd,
    Lrda,
    Grda,
    Other,
}

/// Number of classes.
pub const N_CLASSES: usize = 6;

impl Class {
    /// All classes in vote-column order.
    pub const ALL: [Class; N_CLASSES] = [
        Class::Seizure,
        Class::Lpd,
        Class::Gpd,
        Class::Lrda,
        Class::Grda,
        Class::Other,
    ];

    /// The `expert_consensus` spelling.
    pub fn name(self) -> &'static str {
        CLASS_NAMES[self.index()]
    }

    /// Position in vote-column order.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class at a vote-column position.
    pub fn from_index(i: usize) -> Option<Class> {
        Class::ALL.get(i).copied()
    }
}

/// `expert_consensus` spellings, in vote-column order.
pub const CLASS_NAMES: [&str; N_CLASSES] = ["Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other"];

/// Vote column names, in order.
pub const VOTE_COLUMNS: [&str; N_CLASSES] = [
    "seizure_vote",
    "lpd_vote",
    "gpd_vote",
    "lrda_vote",
    "grda_vote",
    "other_vote",
];

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Class {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CLASS_NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Class::ALL[i])
            .ok_or_else(|| {
                format!(
                    "unknown class {s:?}; expected one of {}",
                    CLASS_NAMES.join(", ")
                )
            })
    }
}
