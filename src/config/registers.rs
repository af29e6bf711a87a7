//! Register lists: inline in the config, or in a YAML or CSV file of their own.
//!
//! Input: the raw `Register<T>` of each list. Output: its items, each tagged with the
//! [`Origin`] validation needs to point at it (the file, and for CSV the row's line number).
//! CSV files may be UTF-8, UTF-8 with a BOM, or GB18030/GBK as Excel writes them on a Chinese
//! desktop. A file that cannot be read or parsed is one problem and contributes no items; a CSV
//! row that cannot be read is one problem and the other rows still load.
//!
//! Bounded and exact: a register file is read up to [`MAX_FILE_BYTES`] and no further (a path
//! such as `/dev/zero` costs one problem, not the memory of the host), and bytes that are not
//! valid in the detected encoding are a problem naming the file, row and column, never
//! replacement characters in a department's name.

use std::fmt;
use std::path::{Path, PathBuf};

use std::io::Read;

use serde::de::{self, DeserializeOwned, IntoDeserializer};

use super::keys::{self, RegisterKind};

use super::raw::{
    ApprovalConfig, ConfigFile, DepartmentConfig, ProjectConfig, Register, SegmentConfig, Text,
    WaiverConfig,
};
use super::{Position, Problem};
pub use crate::problem::{io_message, lowercase_first, yaml_problem};

/// Largest config, register or CA file read: 64 MiB.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// Larger than [`MAX_FILE_BYTES`].
    TooLarge,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(err) => f.write_str(&io_message(err)),
            ReadError::TooLarge => write!(f, "larger than {} MiB", MAX_FILE_BYTES >> 20),
        }
    }
}

/// The bytes of `path`, at most [`MAX_FILE_BYTES`] of them: reading stops one byte past the
/// limit, so an endless file (a device, a pipe) is refused instead of filling memory.
pub fn read_capped(path: &Path) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

/// Where a register item was written.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: PathBuf,
    /// The line of the CSV row; `None` for YAML, whose values carry their own positions.
    pub csv_row: Option<u64>,
}

impl Origin {
    /// A problem about `value` (the field `key` of this item).
    pub fn at(&self, value: &Text, key: &str, message: impl Into<String>) -> Problem {
        self.at_pos(
            value.referenced.line(),
            value.referenced.column(),
            key,
            message,
        )
    }

    /// Where `value` (the field `key` of this item) was written, for later checks.
    pub fn position(&self, value: &Text, key: &str) -> Position {
        match self.csv_row {
            Some(row) => Position {
                file: self.file.clone(),
                line: (row > 0).then_some(row),
                column: None,
                key: Some(key.to_string()),
            },
            None => {
                let at = &value.referenced;
                Position {
                    file: self.file.clone(),
                    line: (at.line() > 0).then_some(at.line()),
                    column: (at.line() > 0 && at.column() > 0).then_some(at.column()),
                    key: None,
                }
            }
        }
    }

    /// A problem at a YAML position, or at this item's CSV row naming the column `key`.
    pub fn at_pos(&self, line: u64, column: u64, key: &str, message: impl Into<String>) -> Problem {
        match self.csv_row {
            Some(row) => Problem::at(
                &self.file,
                row,
                0,
                format!("column `{key}`: {}", message.into()),
            ),
            None => Problem::at(&self.file, line, column, message),
        }
    }
}

/// The items of one register list.
#[derive(Debug)]
pub struct Loaded<T> {
    pub items: Vec<(Origin, T)>,
    /// False when a register file could not be read at all: references into it are not checked,
    /// so one missing file does not bury the real problem under "unknown ..." lines.
    pub complete: bool,
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Loaded {
            items: Vec::new(),
            complete: true,
        }
    }
}

/// All register lists, and the waivers, which are written the same way.
#[derive(Debug, Default)]
pub struct Registers {
    pub departments: Loaded<DepartmentConfig>,
    /// `None` when the config has no `segments` key at all.
    pub segments: Option<Loaded<SegmentConfig>>,
    pub approvals: Loaded<ApprovalConfig>,
    pub projects: Loaded<ProjectConfig>,
    pub exceptions: Loaded<WaiverConfig>,
}

/// The header names a CSV file of this register may use.
pub trait CsvColumns {
    const COLUMNS: &'static [&'static str];
    /// Which register this is, for the unknown-key check of a YAML register file.
    const KIND: RegisterKind;
}

impl CsvColumns for DepartmentConfig {
    const KIND: RegisterKind = RegisterKind::Departments;
    const COLUMNS: &'static [&'static str] = &["id", "name", "emails", "leader_emails"];
}

impl CsvColumns for SegmentConfig {
    const KIND: RegisterKind = RegisterKind::Segments;
    const COLUMNS: &'static [&'static str] = &[
        "name",
        "network",
        "cidrs",
        "exclude",
        "department",
        "consolidate_by",
    ];
}

impl CsvColumns for ApprovalConfig {
    const KIND: RegisterKind = RegisterKind::Approvals;
    const COLUMNS: &'static [&'static str] = &[
        "id",
        "department",
        "segment",
        "addresses",
        "ports",
        "approved_on",
        "expires_on",
    ];
}

impl CsvColumns for ProjectConfig {
    const KIND: RegisterKind = RegisterKind::Projects;
    const COLUMNS: &'static [&'static str] = &[
        "id",
        "name",
        "department",
        "stage",
        "accepted_on",
        "assets",
        "mlps.level",
        "mlps.filing_no",
        "mlps.assessed_on",
        "mlps.conclusion",
        "crypto.assessed_on",
        "crypto.conclusion",
    ];
}

impl CsvColumns for WaiverConfig {
    const KIND: RegisterKind = RegisterKind::Exceptions;
    const COLUMNS: &'static [&'static str] = &[
        "rule",
        "ip",
        "port",
        "segment",
        "department",
        "project",
        "reason",
        "approver",
        "expires_on",
    ];
}

/// Reads every register file the config names; problems go to `problems`.
pub fn load_all(
    file: &mut ConfigFile,
    config_path: &Path,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Registers {
    Registers {
        departments: load(file.departments.take(), config_path, base, problems),
        segments: file
            .segments
            .take()
            .map(|r| load(Some(r), config_path, base, problems)),
        approvals: load(file.approvals.take(), config_path, base, problems),
        projects: load(file.projects.take(), config_path, base, problems),
        exceptions: load(file.exceptions.take(), config_path, base, problems),
    }
}

fn load<T: DeserializeOwned + CsvColumns>(
    register: Option<Register<T>>,
    config_path: &Path,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> Loaded<T> {
    match register {
        None => Loaded::default(),
        Some(Register::Inline(items)) => Loaded {
            items: items
                .into_iter()
                .map(|item| {
                    let origin = Origin {
                        file: config_path.to_path_buf(),
                        csv_row: None,
                    };
                    (origin, item)
                })
                .collect(),
            complete: true,
        },
        Some(Register::File(name)) => {
            let path = base.join(&name.value);
            let fail = |problems: &mut Vec<Problem>, problem: Problem| {
                problems.push(problem);
                Loaded {
                    items: Vec::new(),
                    complete: false,
                }
            };
            let bytes = match read_capped(&path) {
                Ok(bytes) => bytes,
                Err(err) => {
                    let message = format!("cannot read register file `{}`: {err}", path.display());
                    let at = &name.referenced;
                    return fail(
                        problems,
                        Problem::at(config_path, at.line(), at.column(), message),
                    );
                }
            };
            let extension = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            match extension.as_str() {
                "yaml" | "yml" => match yaml_items::<T>(&bytes, &path, problems) {
                    Ok(items) => Loaded {
                        items,
                        complete: true,
                    },
                    Err(problem) => fail(problems, problem),
                },
                "csv" => {
                    let mut complete = true;
                    let items = csv_items::<T>(&bytes, &path, problems, &mut complete);
                    Loaded { items, complete }
                }
                _ => {
                    let at = &name.referenced;
                    let message = format!(
                        "register file `{}` must end in .yaml, .yml or .csv",
                        name.value
                    );
                    fail(
                        problems,
                        Problem::at(config_path, at.line(), at.column(), message),
                    )
                }
            }
        }
    }
}

fn yaml_items<T: DeserializeOwned + CsvColumns>(
    bytes: &[u8],
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Result<Vec<(Origin, T)>, Problem> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_col(&bytes[..e.valid_up_to()]);
        Problem::at(
            path,
            line,
            column,
            "a yaml register file must be utf-8: these bytes are not",
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let items: Vec<T> = if text.trim().is_empty() {
        Vec::new()
    } else {
        let tree: keys::Tree = serde_saphyr::from_str(text).map_err(|e| yaml_problem(path, &e))?;
        keys::check_register_file(&tree, T::KIND, path, problems);
        serde_saphyr::from_str(text).map_err(|e| yaml_problem(path, &e))?
    };
    let origin = Origin {
        file: path.to_path_buf(),
        csv_row: None,
    };
    Ok(items.into_iter().map(|i| (origin.clone(), i)).collect())
}

/// Decodes CSV bytes: UTF-8 (BOM stripped) when valid, GB18030 (a superset of GBK) otherwise.
/// Bytes invalid in the detected encoding are an error with the line and column (in
/// characters, 1-based) where they start: a file whose non-ASCII text before the first bad
/// byte is valid UTF-8 is taken for UTF-8 with a bad byte, any other for GB18030.
pub fn decode_csv(bytes: &[u8]) -> Result<String, DecodeError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let utf8_error = match std::str::from_utf8(bytes) {
        Ok(text) => return Ok(text.to_string()),
        Err(e) => e,
    };
    let good = &bytes[..utf8_error.valid_up_to()];
    if !good.is_ascii() {
        let (line, column) = line_col(good);
        let bad = utf8_error.error_len().unwrap_or(bytes.len() - good.len());
        return Err(DecodeError {
            encoding: "UTF-8",
            line,
            column,
            bytes: hex(&bytes[good.len()..good.len() + bad]),
        });
    }
    let mut decoder = encoding_rs::GB18030.new_decoder_without_bom_handling();
    let mut text = String::with_capacity(bytes.len() * 2 + 16);
    let mut read = 0;
    loop {
        let (result, n) =
            decoder.decode_to_string_without_replacement(&bytes[read..], &mut text, true);
        read += n;
        match result {
            encoding_rs::DecoderResult::InputEmpty => return Ok(text),
            encoding_rs::DecoderResult::OutputFull => text.reserve(bytes.len() - read + 16),
            encoding_rs::DecoderResult::Malformed(bad, after) => {
                let end = read - usize::from(after);
                let start = end.saturating_sub(usize::from(bad));
                let (line, column) = line_col_str(&text);
                return Err(DecodeError {
                    encoding: "GB18030",
                    line,
                    column,
                    bytes: hex(&bytes[start..end]),
                });
            }
        }
    }
}

/// Bytes that are not text in the encoding a CSV register was read in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub encoding: &'static str,
    pub line: u64,
    pub column: u64,
    /// The offending bytes, as `\xNN`.
    pub bytes: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bytes `{}` are not valid {} (the file must be UTF-8 or GB18030/GBK)",
            self.bytes, self.encoding
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\x{b:02x}")).collect()
}

/// Line and column (1-based, in characters) just after valid UTF-8 `bytes`.
fn line_col(bytes: &[u8]) -> (u64, u64) {
    line_col_str(std::str::from_utf8(bytes).unwrap_or(""))
}

/// Line and column (1-based, in characters) just after `text`.
fn line_col_str(text: &str) -> (u64, u64) {
    let line = text.matches('\n').count() as u64 + 1;
    let last = text.rsplit('\n').next().unwrap_or("");
    (line, last.chars().count() as u64 + 1)
}

fn csv_items<T: DeserializeOwned + CsvColumns>(
    bytes: &[u8],
    path: &Path,
    problems: &mut Vec<Problem>,
    complete: &mut bool,
) -> Vec<(Origin, T)> {
    let text = match decode_csv(bytes) {
        Ok(text) => text,
        Err(err) => {
            problems.push(Problem::at(path, err.line, err.column, err.to_string()));
            *complete = false;
            return Vec::new();
        }
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = match reader.headers() {
        Ok(h) => h.iter().map(|h| h.trim().to_string()).collect(),
        Err(err) => {
            problems.push(Problem::at(
                path,
                1,
                0,
                format!("cannot read the header row: {}", csv_message(&err)),
            ));
            *complete = false;
            return Vec::new();
        }
    };
    let mut bad_header = false;
    for (i, header) in headers.iter().enumerate() {
        if header.is_empty() {
            continue;
        }
        if !T::COLUMNS.contains(&header.as_str()) {
            problems.push(Problem::at(
                path,
                1,
                0,
                format!(
                    "unknown column `{header}`: expected {}",
                    T::COLUMNS.join(", ")
                ),
            ));
            bad_header = true;
        } else if headers[..i].contains(header) {
            problems.push(Problem::at(
                path,
                1,
                0,
                format!("duplicate column `{header}`"),
            ));
            bad_header = true;
        }
    }
    if bad_header {
        *complete = false;
        return Vec::new();
    }

    let mut items = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                let line = err.position().map(|p| p.line()).unwrap_or(0);
                problems.push(Problem::at(path, line, 0, csv_message(&err)));
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        if record.len() > headers.len() {
            problems.push(Problem::at(
                path,
                line,
                0,
                format!("{} cells but only {} columns", record.len(), headers.len()),
            ));
            continue;
        }
        let mut row = Node::Map(Vec::new());
        for (header, cell) in headers.iter().zip(record.iter()) {
            let cell = cell.trim();
            if header.is_empty() || cell.is_empty() {
                continue;
            }
            row.insert(header, cell);
        }
        match T::deserialize(NodeDe {
            node: &row,
            key: "",
        }) {
            Ok(item) => items.push((
                Origin {
                    file: path.to_path_buf(),
                    csv_row: Some(line),
                },
                item,
            )),
            Err(err) => {
                let message = match err.column {
                    Some(column) => format!("column `{column}`: {}", err.message),
                    None => err.message,
                };
                problems.push(Problem::at(path, line, 0, message));
            }
        }
    }
    items
}

fn csv_message(err: &csv::Error) -> String {
    let text = err.to_string();
    lowercase_first(&text)
}

/// One CSV row as a tree: `mlps.level` becomes `mlps: {level: ...}`.
enum Node {
    Cell(String),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn insert(&mut self, dotted: &str, cell: &str) {
        let Node::Map(entries) = self else { return };
        match dotted.split_once('.') {
            None => entries.push((dotted.to_string(), Node::Cell(cell.to_string()))),
            Some((head, rest)) => {
                let index = match entries.iter().position(|(k, _)| k == head) {
                    Some(i) => i,
                    None => {
                        entries.push((head.to_string(), Node::Map(Vec::new())));
                        entries.len() - 1
                    }
                };
                entries[index].1.insert(rest, cell);
            }
        }
    }
}

/// A CSV deserialization error, with the column it came from when known.
#[derive(Debug)]
struct CellError {
    column: Option<String>,
    message: String,
}

impl CellError {
    fn in_column(mut self, key: &str) -> Self {
        if self.column.is_none() && !key.is_empty() {
            self.column = Some(key.to_string());
        }
        self
    }
}

impl fmt::Display for CellError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CellError {}

impl de::Error for CellError {
    fn custom<M: fmt::Display>(message: M) -> Self {
        CellError {
            column: None,
            message: lowercase_first(&message.to_string()),
        }
    }
}

/// Deserializes a row (or a nested part of it); `key` is the dotted path of this node.
struct NodeDe<'a> {
    node: &'a Node,
    key: &'a str,
}

/// Splits a list cell on `;`, `；` or `、`.
fn list_items(cell: &str) -> Vec<&str> {
    cell.split([';', '；', '、'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = CellError;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, CellError> {
        match self.node {
            Node::Cell(text) => visitor.visit_str(text),
            Node::Map(entries) => visitor.visit_map(MapAcc {
                entries: entries.iter(),
                value: None,
                prefix: self.key,
                full_key: String::new(),
            }),
        }
        .map_err(|e| e.in_column(self.key))
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, CellError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, CellError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, CellError> {
        match self.node {
            Node::Cell(text) => {
                let items: Vec<NodeOwned> = list_items(text)
                    .into_iter()
                    .map(|t| NodeOwned(Node::Cell(t.to_string())))
                    .collect();
                visitor
                    .visit_seq(SeqAcc {
                        items: items.iter(),
                        key: self.key,
                    })
                    .map_err(|e| e.in_column(self.key))
            }
            Node::Map(_) => self.deserialize_any(visitor),
        }
    }

    fn deserialize_bool<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, CellError> {
        match self.node {
            Node::Cell(text) => match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => visitor.visit_bool(true),
                "false" | "no" | "0" => visitor.visit_bool(false),
                _ => Err(de::Error::custom(format!(
                    "expected true or false, got `{text}`"
                ))),
            }
            .map_err(|e: CellError| e.in_column(self.key)),
            Node::Map(_) => self.deserialize_any(visitor),
        }
    }

    fn deserialize_u64<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, CellError> {
        match self.node {
            Node::Cell(text) => match text.parse::<u64>() {
                Ok(n) => visitor.visit_u64(n),
                Err(_) => Err(de::Error::custom(format!(
                    "expected a number, got `{text}`"
                ))),
            }
            .map_err(|e: CellError| e.in_column(self.key)),
            Node::Map(_) => self.deserialize_any(visitor),
        }
    }

    fn deserialize_u8<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, CellError> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u16<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, CellError> {
        self.deserialize_u64(visitor)
    }
    fn deserialize_u32<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, CellError> {
        self.deserialize_u64(visitor)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u128 f32 f64 char str string bytes byte_buf unit unit_struct
        tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// Owns the pieces a list cell was split into.
struct NodeOwned(Node);

struct SeqAcc<'a> {
    items: std::slice::Iter<'a, NodeOwned>,
    key: &'a str,
}

impl<'de, 'a> de::SeqAccess<'de> for SeqAcc<'a> {
    type Error = CellError;

    fn next_element_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, CellError> {
        match self.items.next() {
            Some(item) => seed
                .deserialize(NodeDe {
                    node: &item.0,
                    key: self.key,
                })
                .map(Some),
            None => Ok(None),
        }
    }
}

struct MapAcc<'a> {
    entries: std::slice::Iter<'a, (String, Node)>,
    value: Option<&'a Node>,
    prefix: &'a str,
    full_key: String,
}

impl<'de, 'a> de::MapAccess<'de> for MapAcc<'a> {
    type Error = CellError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, CellError> {
        match self.entries.next() {
            Some((key, node)) => {
                self.value = Some(node);
                self.full_key = if self.prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.prefix)
                };
                let key: de::value::StrDeserializer<'_, CellError> =
                    key.as_str().into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: de::DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, CellError> {
        let Some(node) = self.value.take() else {
            return Err(de::Error::custom("value without a key"));
        };
        seed.deserialize(NodeDe {
            node,
            key: &self.full_key,
        })
    }
}
