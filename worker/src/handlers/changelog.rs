//! `changelog.generate`: conventional-commit subjects in, a grouped Markdown changelog out.
//!
//! Each input line is one commit subject as `git log --oneline` prints it: an optional short
//! hash, then `type(scope)!: description` (https://www.conventionalcommits.org). A `!` marks a
//! breaking change. Lines that do not follow the convention are kept under "Other Changes".

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Commit {
    hash: Option<String>,
    kind: Option<String>,
    scope: Option<String>,
    breaking: bool,
    description: String,
}

/// Section titles in the order they are printed, with the commit types they gather.
const SECTIONS: [(&str, &[&str]); 7] = [
    ("Features", &["feat"]),
    ("Bug Fixes", &["fix"]),
    ("Performance", &["perf"]),
    ("Reverts", &["revert"]),
    ("Documentation", &["docs"]),
    ("Refactoring", &["refactor"]),
    ("Other Changes", &[]),
];

#[derive(Debug, Clone, Default)]
pub struct Changelog {
    commits: Vec<Commit>,
}

impl Changelog {
    pub fn parse(input: &str) -> Changelog {
        Changelog {
            commits: input
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(parse_line)
                .collect(),
        }
    }

    pub fn commit_count(&self) -> usize {
        self.commits.len()
    }

    pub fn breaking_count(&self) -> usize {
        self.commits.iter().filter(|c| c.breaking).count()
    }

    pub fn render(&self, version: Option<&str>, date: Option<&str>) -> String {
        let mut out = String::new();
        let title = version.unwrap_or("Unreleased");
        match date {
            Some(date) => writeln!(out, "## {title} ({date})"),
            None => writeln!(out, "## {title}"),
        }
        .expect("writing to a String cannot fail");
        let breaking: Vec<&Commit> = self.commits.iter().filter(|c| c.breaking).collect();
        write_section(&mut out, "⚠ Breaking Changes", &breaking);
        for (title, kinds) in SECTIONS {
            let commits: Vec<&Commit> = self
                .commits
                .iter()
                .filter(|c| section_of(c) == title && !(c.breaking && kinds.is_empty()))
                .collect();
            write_section(&mut out, title, &commits);
        }
        out
    }
}

fn section_of(commit: &Commit) -> &'static str {
    let kind = commit.kind.as_deref().unwrap_or("");
    SECTIONS
        .iter()
        .find(|(_, kinds)| kinds.contains(&kind))
        .map_or("Other Changes", |(title, _)| title)
}

fn write_section(out: &mut String, title: &str, commits: &[&Commit]) {
    if commits.is_empty() {
        return;
    }
    let _ = write!(out, "\n### {title}\n\n");
    for commit in commits {
        let _ = write!(out, "- ");
        if let Some(scope) = &commit.scope {
            let _ = write!(out, "**{scope}:** ");
        }
        let _ = write!(out, "{}", commit.description);
        if let Some(hash) = &commit.hash {
            let _ = write!(out, " ({hash})");
        }
        out.push('\n');
    }
}

fn parse_line(line: &str) -> Commit {
    let (hash, subject) = match line.split_once(' ') {
        Some((first, rest))
            if (7..=40).contains(&first.len()) && first.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            (Some(first.to_owned()), rest.trim())
        }
        _ => (None, line),
    };
    parse_subject(subject)
        .unwrap_or_else(|| Commit {
            hash: None,
            kind: None,
            scope: None,
            breaking: false,
            description: subject.to_owned(),
        })
        .with_hash(hash)
}

impl Commit {
    fn with_hash(mut self, hash: Option<String>) -> Commit {
        self.hash = hash;
        self
    }
}

/// `type(scope)!: description`, or `None` when the subject does not follow the convention.
fn parse_subject(subject: &str) -> Option<Commit> {
    let (head, description) = subject.split_once(':')?;
    let description = description.trim();
    let (head, breaking) = match head.strip_suffix('!') {
        Some(head) => (head, true),
        None => (head, false),
    };
    let (kind, scope) = match head.split_once('(') {
        Some((kind, scope)) => (kind, Some(scope.strip_suffix(')')?.trim().to_owned())),
        None => (head, None),
    };
    let valid_kind = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphabetic());
    if !valid_kind || description.is_empty() {
        return None;
    }
    Some(Commit {
        hash: None,
        kind: Some(kind.to_ascii_lowercase()),
        scope: scope.filter(|s| !s.is_empty()),
        breaking,
        description: description.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_commits_by_type_with_breaking_changes_first() {
        let log = Changelog::parse(
            "a1b2c3d feat(api): add batch submission\n\
             fix: keep order of results\n\
             e4f5a6b feat!: drop the v0 routes\n\
             chore: bump deps\n\
             tidy up readme\n",
        );
        assert_eq!(log.commit_count(), 5);
        assert_eq!(log.breaking_count(), 1);
        assert_eq!(
            log.render(Some("2.0.0"), Some("2026-11-22")),
            "## 2.0.0 (2026-11-22)\n\
             \n### ⚠ Breaking Changes\n\n- drop the v0 routes (e4f5a6b)\n\
             \n### Features\n\n- **api:** add batch submission (a1b2c3d)\n- drop the v0 routes (e4f5a6b)\n\
             \n### Bug Fixes\n\n- keep order of results\n\
             \n### Other Changes\n\n- bump deps\n- tidy up readme\n"
        );
    }

    #[test]
    fn empty_input_gives_an_empty_unreleased_section() {
        assert_eq!(
            Changelog::parse("\n\n").render(None, None),
            "## Unreleased\n"
        );
    }
}
