//! The error type of `hbac-common`: every variant names the file, row or field at fault.

use std::fmt;

/// Result alias used throughout `hbac-common`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in an input a problem was found: a file, optionally a line/row and a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// URL or path of the file.
    pub file: String,
    /// 1-based line for CSV (the header is line 1), 0-based row for parquet.
    pub row: Option<RowRef>,
    /// Column name.
    pub field: Option<String>,
}

/// A row reference, kept distinct so messages say "line" for CSV and "row" for parquet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowRef {
    /// 1-based text line of a CSV file (line 1 is the header).
    Line(u64),
    /// 0-based data row of a columnar file.
    Row(u64),
}

impl Location {
    /// A location naming only a file.
    pub fn file(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            row: None,
            field: None,
        }
    }

    /// Adds a CSV line number (1-based, header = 1).
    pub fn line(mut self, line: u64) -> Self {
        self.row = Some(RowRef::Line(line));
        self
    }

    /// Adds a 0-based data row number.
    pub fn row(mut self, row: u64) -> Self {
        self.row = Some(RowRef::Row(row));
        self
    }

    /// Adds a column name.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        match self.row {
            Some(RowRef::Line(l)) => write!(f, ", line {l}")?,
            Some(RowRef::Row(r)) => write!(f, ", row {r}")?,
            None => {}
        }
        if let Some(field) = &self.field {
            write!(f, ", column {field:?}")?;
        }
        Ok(())
    }
}

/// Errors raised by `hbac-common`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A dataset or output root that is not a usable path or URL.
    #[error("invalid storage URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },

    /// An object that does not exist.
    #[error("{url}: not found{note}")]
    NotFound {
        url: String,
        /// Extra context, e.g. " (referenced by train.csv line 7)"; may be empty.
        note: String,
    },

    /// The store refused our credentials.
    #[error(
        "{url}: access denied ({detail}); check the credentials for this store (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_SERVICE_ACCOUNT, AZURE_STORAGE_ACCOUNT_KEY, …)"
    )]
    AccessDenied { url: String, detail: String },

    /// Any other storage failure (network, server error, …), with the full cause chain.
    #[error("{url}: {detail}")]
    Storage { url: String, detail: String },

    /// Input that does not follow the HMS formats.
    #[error("{location}: {message}")]
    Invalid { location: Location, message: String },

    /// Several independent failures (e.g. files that could not be converted), reported together.
    #[error("{} of {total} items failed:{}", .errors.len(), list(.errors))]
    Many { total: usize, errors: Vec<Error> },

    /// A parameter combination scikit-learn would refuse (messages follow scikit-learn's).
    #[error("{0}")]
    Folds(String),

    /// Local I/O outside object storage (e.g. a terminal write).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for [`Error::NotFound`] without a note.
    pub fn not_found(url: impl Into<String>) -> Self {
        Error::NotFound {
            url: url.into(),
            note: String::new(),
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(location: Location, message: impl Into<String>) -> Self {
        Error::Invalid {
            location,
            message: message.into(),
        }
    }
}

/// The first 20 errors, one per line, then a count of the rest.
fn list(errors: &[Error]) -> String {
    let mut s: String = errors.iter().take(20).map(|e| format!("\n  {e}")).collect();
    if errors.len() > 20 {
        s.push_str(&format!("\n  … and {} more", errors.len() - 20));
    }
    s
}
