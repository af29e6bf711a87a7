//! Rendering: the model through minijinja templates to HTML, text and Markdown, and the CSV
//! appendix.
//!
//! Templates are embedded from `templates/` and each may be replaced by a file of the same
//! name in `bulletin.templates_dir`. All are compiled by [`Templates::load`], so a broken
//! template is reported when the command starts, not half-way through a bulletin.
//!
//! Escaping, by the template's extension: `.html` — minijinja's HTML auto-escape; `.md` —
//! Markdown metacharacters and raw HTML escaped, line breaks flattened (a value cannot break a
//! table or inject markup); `.txt` — control characters (terminal escapes, stray CRs) replaced.
//! The CSV defuses cells a spreadsheet would run as a formula; its last column (反馈情况)
//! carries the loop: the department's latest answer on the item and what became of it.

use std::path::Path;

use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, Error, Output, State, Value};
use serde::Serialize;

use super::BulletinError;
use super::model::{DeptItems, Item, Model, PeriodView};
use crate::config::Config;

/// The embedded templates, by name.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "bulletin.html",
        include_str!("../../templates/bulletin.html"),
    ),
    ("bulletin.txt", include_str!("../../templates/bulletin.txt")),
    ("bulletin.md", include_str!("../../templates/bulletin.md")),
    ("notice.html", include_str!("../../templates/notice.html")),
    ("notice.txt", include_str!("../../templates/notice.txt")),
    ("style.css", include_str!("../../templates/style.css")),
    ("rectify.html", include_str!("../../templates/rectify.html")),
    (
        "operator.html",
        include_str!("../../templates/operator.html"),
    ),
    (
        "decision.html",
        include_str!("../../templates/decision.html"),
    ),
    ("decision.txt", include_str!("../../templates/decision.txt")),
];

/// The compiled templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
}

/// A bulletin in every format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub html: String,
    pub text: String,
    pub markdown: String,
    /// UTF-8 with BOM, CRLF line ends.
    pub csv: Vec<u8>,
}

/// One department's rectification notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedNotice {
    pub html: String,
    pub text: String,
    pub csv: Vec<u8>,
}

/// What a notice template sees.
#[derive(Debug, Clone, Serialize)]
struct NoticeView<'a> {
    lang: &'a str,
    zh: bool,
    org: &'a str,
    number_label: &'a str,
    period: &'a PeriodView,
    issued_on: &'a str,
    dept: &'a DeptItems,
    t: &'a std::collections::BTreeMap<&'static str, &'static str>,
    /// The department's rectification page, when `daemon.public_url` is set.
    link: Option<&'a str>,
    /// `bulletin.escalate_after_days` (the notice says when leaders are copied).
    escalate_after_days: u32,
}

impl Templates {
    /// The embedded templates, each replaced by a same-named file in `bulletin.templates_dir`
    /// when there is one; all compiled.
    pub fn load(config: &Config) -> Result<Templates, BulletinError> {
        Templates::load_from(config.bulletin.templates_dir.as_deref())
    }

    pub fn load_from(dir: Option<&Path>) -> Result<Templates, BulletinError> {
        let mut env = Environment::new();
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.trim_blocks(true).lstrip_blocks(true);
        env.set_syntax(syntax.build().map_err(|source| BulletinError::Template {
            name: "syntax".into(),
            source,
        })?);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else if name.ends_with(".md") {
                AutoEscape::Custom("markdown".into())
            } else {
                AutoEscape::Custom("text".into())
            }
        });
        env.set_formatter(format_value);
        env.add_filter("cn", chinese_number);
        for (name, embedded) in EMBEDDED {
            let source = match dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|source| BulletinError::TemplateRead { path, source })?,
                None => (*embedded).to_string(),
            };
            env.add_template_owned(*name, source)
                .map_err(|source| BulletinError::Template {
                    name: (*name).to_string(),
                    source,
                })?;
        }
        Ok(Templates { env })
    }

    fn render_one<S: Serialize>(&self, name: &str, ctx: &S) -> Result<String, BulletinError> {
        let fail = |source| BulletinError::Template {
            name: name.to_string(),
            source,
        };
        let template = self.env.get_template(name).map_err(fail)?;
        template.render(Serde(ctx)).map_err(fail)
    }

    /// A page of the daemon's web face (`rectify.html`, `operator.html`) or a decision mail
    /// (`decision.html`, `decision.txt`), escaped for its extension like every template.
    pub fn render_page<S: Serialize>(&self, name: &str, ctx: &S) -> Result<String, BulletinError> {
        self.render_one(name, ctx)
    }

    /// The bulletin in every format.
    pub fn render(&self, model: &Model) -> Result<Rendered, BulletinError> {
        let mut text = self.render_one("bulletin.txt", model)?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut markdown = self.render_one("bulletin.md", model)?;
        if !markdown.ends_with('\n') {
            markdown.push('\n');
        }
        Ok(Rendered {
            html: self.render_one("bulletin.html", model)?,
            text,
            markdown,
            csv: csv(model, &model.appendix)?,
        })
    }

    /// One department's notice: its own items only.
    pub fn render_notice(
        &self,
        model: &Model,
        dept: &DeptItems,
    ) -> Result<RenderedNotice, BulletinError> {
        self.render_notice_with_link(model, dept, None)
    }

    /// One department's notice, carrying `link` (its rectification page) when given.
    pub fn render_notice_with_link(
        &self,
        model: &Model,
        dept: &DeptItems,
        link: Option<&str>,
    ) -> Result<RenderedNotice, BulletinError> {
        let view = NoticeView {
            lang: &model.lang,
            zh: model.zh,
            org: &model.org,
            number_label: &model.number_label,
            period: &model.period,
            issued_on: &model.issued_on,
            dept,
            t: &model.t,
            link,
            escalate_after_days: model.escalate_after_days,
        };
        let mut text = self.render_one("notice.txt", &view)?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(RenderedNotice {
            html: self.render_one("notice.html", &view)?,
            text,
            csv: csv(model, &dept.items)?,
        })
    }
}

/// The formatter for `{{ ... }}`: HTML auto-escape for `.html`, Markdown escaping for `.md`,
/// control characters removed for text.
fn format_value(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    let kind = state.auto_escape().clone();
    match kind {
        AutoEscape::Custom(ref k) if k == "markdown" && !value.is_safe() => out
            .write_str(&markdown_escape(&plain(value)))
            .map_err(Error::from),
        AutoEscape::Custom(_) => out
            .write_str(&text_clean(&plain(value)))
            .map_err(Error::from),
        _ => {
            // HTML: drop control characters first, then the standard escaping.
            if value.is_safe() {
                minijinja::escape_formatter(out, state, value)
            } else {
                let cleaned = Value::from(text_clean(&plain(value)));
                minijinja::escape_formatter(out, state, &cleaned)
            }
        }
    }
}

/// 1 → 一, 12 → 十二, 21 → 二十一 (up to 99; larger numbers stay as digits).
fn chinese_number(n: i64) -> String {
    const DIGITS: [&str; 10] = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"];
    let digit = |d: i64| DIGITS[usize::try_from(d).unwrap_or(0)];
    match n {
        0..=9 => digit(n).to_string(),
        10..=19 => format!("十{}", if n % 10 == 0 { "" } else { digit(n % 10) }),
        20..=99 => format!(
            "{}十{}",
            digit(n / 10),
            if n % 10 == 0 { "" } else { digit(n % 10) }
        ),
        _ => n.to_string(),
    }
}

fn plain(value: &Value) -> String {
    if value.is_none() || value.is_undefined() {
        String::new()
    } else {
        value.to_string()
    }
}

/// Control characters (CR, LF, ESC, ...) become spaces: a value stays on its line.
pub fn text_clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Escape Markdown metacharacters and HTML, and flatten line breaks, so a value stays one
/// table cell of literal text.
pub fn markdown_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A cell a spreadsheet would not run: one starting with `=`, `+`, `-`, `@`, TAB or CR gets a
/// leading apostrophe (OWASP's advice), unless it is a plain number.
fn csv_cell(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let risky = cleaned
        .chars()
        .next()
        .is_some_and(|c| matches!(c, '=' | '+' | '-' | '@'));
    if risky && cleaned.parse::<f64>().is_err() {
        format!("'{cleaned}")
    } else {
        cleaned
    }
}

/// The 问题清单 CSV: UTF-8 with BOM (Excel opens it as UTF-8), CRLF line ends.
fn csv(model: &Model, items: &[Item]) -> Result<Vec<u8>, BulletinError> {
    let t = |k: &str| model.t.get(k).copied().unwrap_or("").to_string();
    let mut out = "\u{feff}".as_bytes().to_vec();
    {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(&mut out);
        w.write_record(
            [
                "no",
                "id",
                "department",
                "segment",
                "ip",
                "port",
                "kind",
                "severity",
                "description",
                "remediation",
                "basis",
                "first_seen",
                "due",
                "status",
                "feedback",
            ]
            .map(t),
        )?;
        for (n, i) in items.iter().enumerate() {
            w.write_record([
                (n + 1).to_string(),
                i.id.clone(),
                csv_cell(&i.department),
                csv_cell(&i.segment),
                csv_cell(&i.ip),
                i.port.clone(),
                csv_cell(&i.kind),
                i.severity_label.clone(),
                csv_cell(&i.description),
                csv_cell(&i.remediation),
                csv_cell(&i.basis),
                i.first_seen.clone(),
                i.due.clone(),
                i.status_label.clone(),
                csv_cell(&i.feedback),
            ])?;
        }
        w.flush().map_err(csv::Error::from)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            markdown_escape("a|b<script>\r\n*x*"),
            "a\\|b&lt;script&gt;  \\*x\\*"
        );
        assert_eq!(text_clean("a\r\nb\x1b[31m"), "a  b [31m");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(csv_cell("-5"), "-5");
        assert_eq!(csv_cell("a\r\nb"), "a  b");
    }

    #[test]
    fn embedded_templates_compile() {
        Templates::load_from(None).unwrap();
    }
}
