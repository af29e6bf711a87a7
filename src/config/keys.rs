//! Unknown keys, every one of them: the YAML read as a tree with the position of each key, walked
//! against the keys the raw structs of `raw.rs` know.
//!
//! serde's `deny_unknown_fields` stops a file at its first unknown key, so an operator fixing
//! mistakes one by one would see them one by one. Here the whole file is walked first; each
//! unknown key is one problem at its position, and one that is a known key misspelt says which
//! one was meant. The known keys come from serde itself (the field lists its derived
//! `Deserialize` passes to the deserializer), so this walk cannot drift from `raw.rs`; only the
//! nesting (which key holds which struct) is written here.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Visitor};
use serde_saphyr::Spanned;

use super::Problem;
use super::raw;

/// A YAML document as a tree: only what the walk needs (keys and their positions).
#[derive(Debug)]
pub enum Tree {
    Map(Vec<(Spanned<Key>, Tree)>),
    Seq(Vec<Tree>),
    Scalar,
}

/// A map key as text, whatever scalar it was written as (`2: 24` has an integer key).
#[derive(Debug)]
pub struct Key(pub String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key("null".to_string()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key("null".to_string()))
            }
            // A key that is itself a map or a list is never a known key: keep it as text.
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Key("{...}".to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Key, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Key("[...]".to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tree;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_none<E>(self) -> Result<Tree, E> {
                Ok(Tree::Scalar)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
                Tree::deserialize(d)
            }
            fn visit_newtype_struct<D: de::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<Tree, D::Error> {
                Tree::deserialize(d)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Tree>()? {
                    items.push(item);
                }
                Ok(Tree::Seq(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<Spanned<Key>, Tree>()? {
                    entries.push(entry);
                }
                Ok(Tree::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// The field names serde's derived `Deserialize` of `T` knows, read by asking it to deserialize
/// from a deserializer that only records them.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The structs of `raw.rs` whose keys are checked.
#[derive(Debug, Clone, Copy)]
enum Node {
    Root,
    Organisation,
    Store,
    Trust,
    Scan,
    Dns,
    Department,
    Segment,
    Approval,
    Project,
    Mlps,
    Crypto,
    Daemon,
    ScheduledScan,
    Bulletin,
    Smtp,
    Rules,
    RuleOverride,
    Compliance,
    Waiver,
    Sensor,
    Hub,
}

/// What a value must look like.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Struct(Node),
    /// A list of structs.
    ListOf(Node),
    /// A register: a list of structs, or `{file: PATH}`.
    Register(Node),
    /// A map whose keys are data (rule ids), each holding a struct.
    MapOf(Node),
    /// Anything: its keys, if any, are not checked here.
    Free,
}

impl Node {
    fn fields(self) -> &'static [&'static str] {
        match self {
            Node::Root => fields_of::<raw::ConfigFile>(),
            Node::Organisation => fields_of::<raw::OrganisationConfig>(),
            Node::Store => fields_of::<raw::StoreConfig>(),
            Node::Trust => fields_of::<raw::TrustConfig>(),
            Node::Scan => fields_of::<raw::ScanConfig>(),
            Node::Dns => fields_of::<raw::DnsConfig>(),
            Node::Department => fields_of::<raw::DepartmentConfig>(),
            Node::Segment => fields_of::<raw::SegmentConfig>(),
            Node::Approval => fields_of::<raw::ApprovalConfig>(),
            Node::Project => fields_of::<raw::ProjectConfig>(),
            Node::Mlps => fields_of::<raw::MlpsConfig>(),
            Node::Crypto => fields_of::<raw::CryptoConfig>(),
            Node::Daemon => fields_of::<raw::DaemonConfig>(),
            Node::ScheduledScan => fields_of::<raw::ScheduledScanConfig>(),
            Node::Bulletin => fields_of::<raw::BulletinConfig>(),
            Node::Smtp => fields_of::<raw::SmtpConfig>(),
            Node::Rules => fields_of::<raw::RulesConfig>(),
            Node::RuleOverride => fields_of::<raw::RuleOverrideConfig>(),
            Node::Compliance => fields_of::<raw::ComplianceConfig>(),
            Node::Waiver => fields_of::<raw::WaiverConfig>(),
            Node::Sensor => fields_of::<raw::SensorConfig>(),
            Node::Hub => fields_of::<raw::HubConfig>(),
        }
    }

    /// The shape of the value under `key`.
    fn child(self, key: &str) -> Shape {
        match (self, key) {
            (Node::Root, "organisation") => Shape::Struct(Node::Organisation),
            (Node::Root, "store") => Shape::Struct(Node::Store),
            (Node::Root, "trust") => Shape::Struct(Node::Trust),
            (Node::Root, "scan") => Shape::Struct(Node::Scan),
            (Node::Root, "departments") => Shape::Register(Node::Department),
            (Node::Root, "segments") => Shape::Register(Node::Segment),
            (Node::Root, "approvals") => Shape::Register(Node::Approval),
            (Node::Root, "projects") => Shape::Register(Node::Project),
            (Node::Root, "daemon") => Shape::Struct(Node::Daemon),
            (Node::Root, "bulletin") => Shape::Struct(Node::Bulletin),
            (Node::Root, "smtp") => Shape::Struct(Node::Smtp),
            (Node::Root, "rules") => Shape::Struct(Node::Rules),
            (Node::Root, "compliance") => Shape::Struct(Node::Compliance),
            (Node::Root, "exceptions") => Shape::Register(Node::Waiver),
            (Node::Root, "sensors") => Shape::ListOf(Node::Sensor),
            (Node::Root, "hub") => Shape::Struct(Node::Hub),
            (Node::Scan, "dns") => Shape::Struct(Node::Dns),
            (Node::Project, "mlps") => Shape::Struct(Node::Mlps),
            (Node::Project, "crypto") => Shape::Struct(Node::Crypto),
            (Node::Daemon, "scans") => Shape::ListOf(Node::ScheduledScan),
            (Node::Rules, "overrides") => Shape::MapOf(Node::RuleOverride),
            _ => Shape::Free,
        }
    }
}

/// Which register a YAML register file holds, for [`check_register_file`].
#[derive(Debug, Clone, Copy)]
pub enum RegisterKind {
    Departments,
    Segments,
    Approvals,
    Projects,
    Exceptions,
}

/// Every unknown key of a config file's tree.
pub fn check_config(tree: &Tree, path: &Path, problems: &mut Vec<Problem>) {
    walk(tree, Shape::Struct(Node::Root), path, problems);
}

/// Every unknown key of a YAML register file's tree (a list of items).
pub fn check_register_file(
    tree: &Tree,
    kind: RegisterKind,
    path: &Path,
    problems: &mut Vec<Problem>,
) {
    let node = match kind {
        RegisterKind::Departments => Node::Department,
        RegisterKind::Segments => Node::Segment,
        RegisterKind::Approvals => Node::Approval,
        RegisterKind::Projects => Node::Project,
        RegisterKind::Exceptions => Node::Waiver,
    };
    walk(tree, Shape::ListOf(node), path, problems);
}

fn walk(tree: &Tree, shape: Shape, path: &Path, problems: &mut Vec<Problem>) {
    match (shape, tree) {
        (Shape::Struct(node), Tree::Map(entries)) => {
            let known = node.fields();
            for (key, value) in entries {
                if known.contains(&key.value.0.as_str()) {
                    walk(value, node.child(&key.value.0), path, problems);
                } else {
                    problems.push(unknown(key, known, path));
                }
            }
        }
        (Shape::ListOf(node), Tree::Seq(items)) | (Shape::Register(node), Tree::Seq(items)) => {
            for item in items {
                walk(item, Shape::Struct(node), path, problems);
            }
        }
        (Shape::Register(_), Tree::Map(entries)) => {
            for (key, _) in entries {
                if key.value.0 != "file" {
                    problems.push(unknown(key, &["file"], path));
                }
            }
        }
        (Shape::MapOf(node), Tree::Map(entries)) => {
            for (_, value) in entries {
                walk(value, Shape::Struct(node), path, problems);
            }
        }
        // A value of the wrong kind is serde's to report, with the type it expected.
        _ => {}
    }
}

fn unknown(key: &Spanned<Key>, known: &[&str], path: &Path) -> Problem {
    let name = &key.value.0;
    let mut message = format!(
        "unknown field `{name}`, expected one of {}",
        known.join(", ")
    );
    if let Some(meant) = closest(name, known) {
        message.push_str(&format!(": did you mean `{meant}`?"));
    }
    Problem::at(
        path,
        key.referenced.line(),
        key.referenced.column(),
        message,
    )
}

/// The known key `name` is most likely a misspelling of: within an edit distance of a third of
/// its length (at least 1, at most 3), the nearest one, the first of equals.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let limit = (lower.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (edit_distance(&lower, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance with adjacent transpositions counted as one edit (`prots` → `ports`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    rows[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lists_come_from_serde() {
        assert!(Node::Scan.fields().contains(&"timeout_ms"));
        assert!(Node::Root.fields().contains(&"segments"));
        assert!(Node::Project.fields().contains(&"mlps"));
    }

    #[test]
    fn misspellings() {
        let known = ["icmp", "ports", "rate", "concurrency", "timeout_ms"];
        assert_eq!(closest("prots", &known), Some("ports"));
        assert_eq!(closest("timeout", &known), None);
        assert_eq!(closest("timout_ms", &known), Some("timeout_ms"));
        assert_eq!(closest("colour", &known), None);
        assert_eq!(closest("Rate", &known), Some("rate"));
    }
}
