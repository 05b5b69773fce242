//! Drive's search query language (`q` of `files.list`), the part a sync uses: `trashed`,
//! `modifiedTime`/`createdTime` comparisons, `sharedWithMe`, `mimeType`, `name`,
//! `'me' in owners`, joined with `and`, `or`, `not` and parentheses. Anything else is refused
//! as Drive refuses it (400, Invalid Value, location q).

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::fake_providers::query_tokens::{self, Punctuation, Token};

/// What a file must be for a query to hold.
pub(crate) struct Facts<'a> {
    pub trashed: bool,
    pub modified: DateTime<Utc>,
    pub created: DateTime<Utc>,
    pub shared_with_me: bool,
    pub owned_by_me: bool,
    pub mime_type: &'a str,
    pub name: &'a str,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Query {
    And(Box<Query>, Box<Query>),
    Or(Box<Query>, Box<Query>),
    Not(Box<Query>),
    Trashed(bool),
    SharedWithMe,
    OwnedByMe,
    Modified(Comparison, DateTime<Utc>),
    Created(Comparison, DateTime<Utc>),
    MimeType(bool, String),
    NameContains(String),
    Name(bool, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Comparison {
    Equal,
    NotEqual,
    After,
    AtOrAfter,
    Before,
    AtOrBefore,
}

impl Comparison {
    fn holds(self, left: DateTime<Utc>, right: DateTime<Utc>) -> bool {
        match self {
            Comparison::Equal => left == right,
            Comparison::NotEqual => left != right,
            Comparison::After => left > right,
            Comparison::AtOrAfter => left >= right,
            Comparison::Before => left < right,
            Comparison::AtOrBefore => left <= right,
        }
    }
}

impl Query {
    pub fn matches(&self, file: &Facts) -> bool {
        match self {
            Query::And(left, right) => left.matches(file) && right.matches(file),
            Query::Or(left, right) => left.matches(file) || right.matches(file),
            Query::Not(inner) => !inner.matches(file),
            Query::Trashed(trashed) => file.trashed == *trashed,
            Query::SharedWithMe => file.shared_with_me,
            Query::OwnedByMe => file.owned_by_me,
            Query::Modified(comparison, time) => comparison.holds(file.modified, *time),
            Query::Created(comparison, time) => comparison.holds(file.created, *time),
            Query::MimeType(equal, mime) => (file.mime_type == mime) == *equal,
            Query::NameContains(part) => file.name.contains(part.as_str()),
            Query::Name(equal, name) => (file.name == name) == *equal,
        }
    }
}

/// Drive's punctuation: `=`, `!=`, `<`, `<=`, `>`, `>=`; no commas.
const DRIVE: Punctuation = Punctuation {
    operators: "=!<>",
    commas: false,
};

/// Parses a `q`; `None` when Drive would refuse it.
pub(crate) fn parse(q: &str) -> Option<Query> {
    let tokens = query_tokens::tokens(q, &DRIVE)?;
    let (query, rest) = disjunction(&tokens)?;
    rest.is_empty().then_some(query)
}

fn disjunction(tokens: &[Token]) -> Option<(Query, &[Token])> {
    let (mut query, mut rest) = conjunction(tokens)?;
    while rest.first().is_some_and(|token| token.is_word("or")) {
        let (right, after) = conjunction(&rest[1..])?;
        query = Query::Or(Box::new(query), Box::new(right));
        rest = after;
    }
    Some((query, rest))
}

fn conjunction(tokens: &[Token]) -> Option<(Query, &[Token])> {
    let (mut query, mut rest) = unary(tokens)?;
    while rest.first().is_some_and(|token| token.is_word("and")) {
        let (right, after) = unary(&rest[1..])?;
        query = Query::And(Box::new(query), Box::new(right));
        rest = after;
    }
    Some((query, rest))
}

fn unary(tokens: &[Token]) -> Option<(Query, &[Token])> {
    match tokens {
        [Token::Word(not), rest @ ..] if not.eq_ignore_ascii_case("not") => {
            let (inner, rest) = unary(rest)?;
            Some((Query::Not(Box::new(inner)), rest))
        }
        [Token::Open, rest @ ..] => {
            let (inner, rest) = disjunction(rest)?;
            match rest {
                [Token::Close, rest @ ..] => Some((inner, rest)),
                _ => None,
            }
        }
        _ => term(tokens),
    }
}

fn term(tokens: &[Token]) -> Option<(Query, &[Token])> {
    match tokens {
        [Token::Word(word), rest @ ..] if word == "sharedWithMe" => {
            Some((Query::SharedWithMe, rest))
        }
        [
            Token::Quoted(me),
            Token::Word(is_in),
            Token::Word(owners),
            rest @ ..,
        ] if me == "me" && is_in == "in" && owners == "owners" => Some((Query::OwnedByMe, rest)),
        [
            Token::Word(field),
            Token::Word(contains),
            Token::Quoted(value),
            rest @ ..,
        ] if field == "name" && contains == "contains" => {
            Some((Query::NameContains(value.clone()), rest))
        }
        [Token::Word(field), Token::Operator(op), value, rest @ ..] => {
            let comparison = match op.as_str() {
                "=" => Comparison::Equal,
                "!=" => Comparison::NotEqual,
                ">" => Comparison::After,
                ">=" => Comparison::AtOrAfter,
                "<" => Comparison::Before,
                "<=" => Comparison::AtOrBefore,
                _ => return None,
            };
            let equality = match comparison {
                Comparison::Equal => Some(true),
                Comparison::NotEqual => Some(false),
                _ => None,
            };
            let query = match (field.as_str(), value) {
                ("trashed", Token::Word(value)) => {
                    let trashed = value.parse::<bool>().ok()?;
                    Query::Trashed(trashed == equality?)
                }
                ("modifiedTime", Token::Quoted(time)) => {
                    Query::Modified(comparison, time_value(time)?)
                }
                ("createdTime", Token::Quoted(time)) => {
                    Query::Created(comparison, time_value(time)?)
                }
                ("mimeType", Token::Quoted(mime)) => Query::MimeType(equality?, mime.clone()),
                ("name", Token::Quoted(name)) => Query::Name(equality?, name.clone()),
                _ => return None,
            };
            Some((query, rest))
        }
        _ => None,
    }
}

/// RFC 3339, UTC when the zone is left out (`2026-11-30T10:00:00`).
fn time_value(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|time| time.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(trashed: bool, modified: &str, shared_with_me: bool) -> (bool, DateTime<Utc>, bool) {
        (trashed, time_value(modified).unwrap(), shared_with_me)
    }

    #[test]
    fn the_sync_query_keeps_untrashed_files_modified_since_or_shared() {
        let query =
            parse("trashed = false and (modifiedTime > '2026-11-30T10:00:00Z' or sharedWithMe)")
                .unwrap();
        let cases = [
            (file(false, "2026-11-30T10:00:01Z", false), true),
            (file(false, "2026-11-30T09:00:00Z", false), false),
            (file(false, "2026-11-30T09:00:00Z", true), true),
            (file(true, "2026-11-30T11:00:00Z", false), false),
        ];
        for ((trashed, modified, shared_with_me), expected) in cases {
            let facts = Facts {
                trashed,
                modified,
                created: modified,
                shared_with_me,
                owned_by_me: !shared_with_me,
                mime_type: "application/pdf",
                name: "x",
            };
            assert_eq!(query.matches(&facts), expected);
        }
    }

    #[test]
    fn unknown_terms_and_unbalanced_parentheses_are_refused() {
        assert!(parse("starred = true").is_none());
        assert!(parse("trashed = false and (sharedWithMe").is_none());
        assert!(parse("modifiedTime > 'yesterday'").is_none());
    }
}
