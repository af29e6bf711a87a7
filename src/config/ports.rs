//! Port lists: single ports, `A-B` ranges and the named sets.
//!
//! Input: the items of `scan.ports` or `approvals[].ports` as text. Output: a sorted,
//! deduplicated `Vec<u16>` with no port 0, or a lowercase message for the item that is wrong.

/// Ports Chinese regulators ask government networks to close to the outside.
const GOV_HIGH_RISK: &[u16] = &[
    21, 23, 69, 135, 137, 138, 139, 445, 1433, 1521, 2375, 2376, 3306, 3389, 5432, 5900, 6379,
    9200, 11211, 27017,
];

/// A mix of common services, remote administration and databases.
const DEFAULT: &[u16] = &[
    21, 22, 23, 25, 53, 80, 81, 110, 111, 135, 139, 143, 389, 443, 445, 465, 587, 636, 873, 993,
    995, 1080, 1433, 1521, 2049, 2375, 2376, 3306, 3389, 5432, 5900, 5985, 6379, 6443, 7001, 8000,
    8080, 8081, 8443, 8888, 9000, 9090, 9200, 9443, 10250, 11211, 27017,
];

const TOP_WEB: &[u16] = &[80, 443, 8000, 8008, 8080, 8081, 8088, 8443, 8888, 9443];

/// Names accepted by [`named_port_set`], in the order error messages list them.
pub const NAMED_SETS: &[&str] = &["default", "gov-high-risk", "top-web", "all"];

/// The ports of a named set (`default`, `gov-high-risk`, `top-web`, `all`), sorted.
pub fn named_port_set(name: &str) -> Option<Vec<u16>> {
    match name {
        "default" => Some(sorted(DEFAULT)),
        "gov-high-risk" => Some(sorted(GOV_HIGH_RISK)),
        "top-web" => Some(sorted(TOP_WEB)),
        "all" => Some((1..=u16::MAX).collect()),
        _ => None,
    }
}

fn sorted(ports: &[u16]) -> Vec<u16> {
    let mut v = ports.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// Parses one item: a port number, a range `A-B` (inclusive) or a named set.
pub fn parse_item(item: &str) -> Result<Vec<u16>, String> {
    let item = item.trim();
    if let Some(set) = named_port_set(item) {
        return Ok(set);
    }
    if let Some((a, b)) = item.split_once('-')
        && !a.trim().is_empty()
    {
        let a = parse_port(a.trim(), item)?;
        let b = parse_port(b.trim(), item)?;
        if a > b {
            return Err(format!("reversed port range `{item}`"));
        }
        return Ok((a..=b).collect());
    }
    if item.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') {
        return parse_port(item, item).map(|p| vec![p]);
    }
    Err(format!(
        "unknown port set `{item}`: expected a port, a range A-B, or one of {}",
        NAMED_SETS.join(", ")
    ))
}

fn parse_port(text: &str, item: &str) -> Result<u16, String> {
    match text.parse::<i64>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(format!("port `{item}` is out of range 1-65535")),
        Err(_) => Err(format!("invalid port `{item}`")),
    }
}

/// Merges parsed items into one sorted, deduplicated list.
pub fn merge(parts: impl IntoIterator<Item = Vec<u16>>) -> Vec<u16> {
    let mut all: Vec<u16> = parts.into_iter().flatten().collect();
    all.sort_unstable();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items() {
        assert_eq!(parse_item("22"), Ok(vec![22]));
        assert_eq!(parse_item("8000-8003"), Ok(vec![8000, 8001, 8002, 8003]));
        assert_eq!(parse_item("all").map(|v| v.len()), Ok(65535));
        assert!(parse_item("gov-high-risk").unwrap().contains(&3389));
        assert_eq!(
            parse_item("0"),
            Err("port `0` is out of range 1-65535".into())
        );
        assert_eq!(
            parse_item("65536"),
            Err("port `65536` is out of range 1-65535".into())
        );
        assert_eq!(
            parse_item("-1"),
            Err("port `-1` is out of range 1-65535".into())
        );
        assert_eq!(
            parse_item("90-80"),
            Err("reversed port range `90-80`".into())
        );
        assert_eq!(parse_item("80-x"), Err("invalid port `80-x`".into()));
        assert!(
            parse_item("web")
                .unwrap_err()
                .starts_with("unknown port set `web`")
        );
    }

    #[test]
    fn named_sets_are_sorted_and_unique() {
        for name in NAMED_SETS {
            let set = named_port_set(name).unwrap();
            assert!(set.windows(2).all(|w| w[0] < w[1]), "{name}");
            assert!(!set.contains(&0));
        }
        assert_eq!(named_port_set("gov-high-risk").unwrap().len(), 20);
        assert_eq!(merge([vec![443, 80], vec![80, 22]]), vec![22, 80, 443]);
    }
}
