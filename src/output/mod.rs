//! Outputs: what netpatrol shows. `report` renders a scan as the JSON document of docs/report.md
//! and as the terminal table; `metrics` builds the Prometheus families from the store at scrape
//! time; `mail` sends through SMTP. [`write_file`] is how every output file is written.

pub mod mail;
pub mod metrics;
pub mod report;

/// Write `bytes` to `path` safely: into a temporary file created exclusively (`O_EXCL`, a
/// random name) in `path`'s directory, flushed to disk, then renamed over `path`. A reader never
/// sees half a file, and no symlink is followed: not one planted at a temporary name (the name
/// is new and created exclusively), nor one at `path` (the rename replaces the link itself).
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
