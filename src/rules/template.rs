//! Evidence templates: text with `{fact.name}` placeholders, parsed and checked at load.
//!
//! `{{` and `}}` stand for literal braces. A placeholder must name a catalogue fact visible
//! from the rule's subject; a null fact renders as `-`.

use crate::facts::{self, Facts, Subject};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Fact(&'static str),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; every problem is returned as a message (without position or rule id).
    /// `subject` is `None` when the rule's subject is invalid: visibility is then not checked.
    pub fn parse(text: &str, subject: Option<Subject>) -> Result<Template, Vec<String>> {
        let mut parts = Vec::new();
        let mut problems = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
                literal.push_str(&tail[..1]);
                rest = after;
                continue;
            }
            if let Some(after) = tail.strip_prefix('}') {
                problems.push("unmatched `}` (write `}}` for a literal brace)".to_string());
                rest = after;
                continue;
            }
            let Some(end) = tail.find('}') else {
                problems.push("unclosed `{` (write `{{` for a literal brace)".to_string());
                rest = "";
                break;
            };
            let name = tail[1..end].trim();
            match facts::lookup(name) {
                None => problems.push(format!("unknown fact `{{{name}}}`")),
                Some(fact) => {
                    if let Some(subject) = subject
                        && !subject.sees(fact.subject)
                    {
                        problems.push(format!(
                            "fact `{{{name}}}` belongs to a {} and is not visible from subject `{}`",
                            fact.subject.as_str(),
                            subject.as_str()
                        ));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Fact(fact.name));
                }
            }
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if problems.is_empty() {
            Ok(Template { parts })
        } else {
            Err(problems)
        }
    }

    pub fn render(&self, facts: &Facts) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Fact(name) => out.push_str(&facts.get(name).to_string()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_facts_and_escaped_braces() {
        let t = Template::parse(
            "{host.ip}:{service.port} {{x}} {host.ptr}",
            Some(Subject::Service),
        )
        .unwrap();
        let mut facts = Facts::new();
        facts.set("host.ip", "192.0.2.10");
        facts.set("service.port", 23i64);
        assert_eq!(t.render(&facts), "192.0.2.10:23 {x} -");
        let list = Template::parse("{tls.legacy_versions}", Some(Subject::Service)).unwrap();
        facts.set(
            "tls.legacy_versions",
            vec!["TLSv1.0".to_string(), "TLSv1.1".to_string()],
        );
        assert_eq!(list.render(&facts), "TLSv1.0, TLSv1.1");
    }

    #[test]
    fn reports_every_mistake() {
        assert_eq!(
            Template::parse("{host.nope} {service.port} } {host.ip", Some(Subject::Host)),
            Err(vec![
                "unknown fact `{host.nope}`".to_string(),
                "fact `{service.port}` belongs to a service and is not visible from subject `host`"
                    .to_string(),
                "unmatched `}` (write `}}` for a literal brace)".to_string(),
                "unclosed `{` (write `{{` for a literal brace)".to_string(),
            ])
        );
    }
}
