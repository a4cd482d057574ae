//! Parquet rows as plain records: the one place that knows the `parquet` crate's row API.
//!
//! A [`Record`] keeps its columns in file order with typed values; the task converters in
//! [`crate::datasets`] read them by name and say which column was missing or mistyped.

use std::fs::File;
use std::path::Path;

use parquet::file::reader::SerializedFileReader;
use parquet::record::{Field, Row};

use crate::error::{Error, Result};

/// One value of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A null (datasets writes every column as optional).
    Null,
    /// A boolean.
    Bool(bool),
    /// Any integer column (ClassLabel columns are int64, `idx` int32).
    Int(i64),
    /// A float32 column (GLUE STS-B scores): kept as f32 so it prints as written.
    F32(f32),
    /// A float64 column.
    F64(f64),
    /// A UTF-8 string.
    Str(String),
    /// A struct column (MultiRC's `idx {paragraph, question, answer}`).
    Group(Record),
    /// A list column.
    List(Vec<Value>),
}

/// One row: column names and values, in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record(pub Vec<(String, Value)>);

impl Record {
    /// A record from `(name, value)` pairs (tests, and the converters' own rows).
    pub fn new(fields: Vec<(&str, Value)>) -> Self {
        Record(fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// The value of column `name`.
    pub fn get(&self, name: &str) -> std::result::Result<&Value, String> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v).ok_or_else(|| {
            let names: Vec<&str> = self.0.iter().map(|(k, _)| k.as_str()).collect();
            format!("no column '{name}' (columns: {})", names.join(", "))
        })
    }

    /// Column `name` as a string.
    pub fn str(&self, name: &str) -> std::result::Result<&str, String> {
        match self.get(name)? {
            Value::Str(s) => Ok(s),
            other => Err(format!("column '{name}' is {other:?}, expected a string")),
        }
    }

    /// Column `name` as an integer.
    pub fn int(&self, name: &str) -> std::result::Result<i64, String> {
        match self.get(name)? {
            Value::Int(i) => Ok(*i),
            other => Err(format!("column '{name}' is {other:?}, expected an integer")),
        }
    }

    /// Column `name` as a number written back as text: a float32 prints with the fewest
    /// digits that read back to it (`3.8`, not `3.799999952316284`).
    pub fn number_text(&self, name: &str) -> std::result::Result<String, String> {
        match self.get(name)? {
            Value::F32(x) => Ok(x.to_string()),
            Value::F64(x) => Ok(x.to_string()),
            Value::Int(i) => Ok(i.to_string()),
            other => Err(format!("column '{name}' is {other:?}, expected a number")),
        }
    }

    /// Column `name` as a struct.
    pub fn group(&self, name: &str) -> std::result::Result<&Record, String> {
        match self.get(name)? {
            Value::Group(r) => Ok(r),
            other => Err(format!("column '{name}' is {other:?}, expected a struct")),
        }
    }
}

/// Every row of a parquet file, in order.
pub fn read_parquet(path: &Path) -> Result<Vec<Record>> {
    let parquet_error = |source| Error::Parquet { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
    let mut out = Vec::new();
    for row in reader {
        let row = row.map_err(parquet_error)?;
        let n = out.len();
        let rec =
            record(row).map_err(|message| Error::Row { source_file: path.display().to_string(), row: n, message })?;
        out.push(rec);
    }
    Ok(out)
}

fn record(row: Row) -> std::result::Result<Record, String> {
    let mut fields = Vec::new();
    for (name, field) in row.into_columns() {
        let v = value(field, &name)?;
        fields.push((name, v));
    }
    Ok(Record(fields))
}

fn value(field: Field, column: &str) -> std::result::Result<Value, String> {
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(b),
        Field::Byte(i) => Value::Int(i.into()),
        Field::Short(i) => Value::Int(i.into()),
        Field::Int(i) => Value::Int(i.into()),
        Field::Long(i) => Value::Int(i),
        Field::UByte(i) => Value::Int(i.into()),
        Field::UShort(i) => Value::Int(i.into()),
        Field::UInt(i) => Value::Int(i.into()),
        Field::ULong(i) => Value::Int(i64::try_from(i).map_err(|_| format!("column '{column}': {i} overflows i64"))?),
        Field::Float(x) => Value::F32(x),
        Field::Double(x) => Value::F64(x),
        Field::Str(s) => Value::Str(s),
        Field::Bytes(b) => Value::Str(
            String::from_utf8(b.data().to_vec())
                .map_err(|_| format!("column '{column}' holds bytes that are not UTF-8"))?,
        ),
        Field::Group(row) => Value::Group(record(row)?),
        Field::ListInternal(list) => {
            Value::List(list.elements().iter().map(|f| value(f.clone(), column)).collect::<Result<_, _>>()?)
        }
        other => return Err(format!("column '{column}' has a type this reader does not convert: {other:?}")),
    })
}
