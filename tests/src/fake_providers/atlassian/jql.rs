//! The part of JQL the fake Jira understands: clauses joined by AND on `assignee`
//! (`currentUser()`), `statusCategory` and `updated`/`created`, then an optional ORDER BY.
//! Anything else is refused with Jira's own 400 wording, so a client that drifts from the
//! queries it is meant to send finds out.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};

use crate::fake_providers::query_tokens::{self, Punctuation, Token};

/// A status category, as JQL and the `statusCategory` field name it, in workflow order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd)]
pub(crate) enum Category {
    New,
    Indeterminate,
    Done,
}

impl Category {
    /// By name ("To Do", "In Progress", "Done"), key or id, any case.
    fn named(value: &str) -> Option<Category> {
        match value.to_ascii_lowercase().as_str() {
            "to do" | "new" | "2" => Some(Category::New),
            "in progress" | "indeterminate" | "4" => Some(Category::Indeterminate),
            "done" | "complete" | "3" => Some(Category::Done),
            _ => None,
        }
    }
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
    fn holds<T: PartialOrd>(self, left: T, right: T) -> bool {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DateField {
    Updated,
    Created,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Clause {
    AssignedToMe,
    StatusCategory(Comparison, Category),
    Date(DateField, Comparison, DateTime<Utc>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SortField {
    Updated,
    Created,
    Key,
}

/// What an issue must be for a clause to hold.
pub(crate) struct Facts {
    pub category: Category,
    pub updated: DateTime<Utc>,
    pub created: DateTime<Utc>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct Query {
    pub clauses: Vec<Clause>,
    /// (field, descending), most significant first.
    pub order: Vec<(SortField, bool)>,
}

impl Query {
    pub fn matches(&self, facts: &Facts) -> bool {
        self.clauses.iter().all(|clause| match clause {
            Clause::AssignedToMe => true,
            Clause::StatusCategory(comparison, category) => {
                comparison.holds(facts.category, *category)
            }
            Clause::Date(field, comparison, time) => {
                let value = match field {
                    DateField::Updated => facts.updated,
                    DateField::Created => facts.created,
                };
                comparison.holds(value, *time)
            }
        })
    }
}

/// JQL's punctuation: `=`, `!=`, `<`, `<=`, `>`, `>=`, `~`, `!~`, and commas in lists.
const JQL: Punctuation = Punctuation {
    operators: "=!<>~",
    commas: true,
};

fn tokens(jql: &str) -> Result<Vec<Token>, String> {
    query_tokens::tokens(jql, &JQL).ok_or_else(|| syntax_error("the end of the query"))
}

fn syntax_error(found: &str) -> String {
    format!(
        "Error in the JQL Query: Expecting a field, operator or value but got {found}. The query contains a syntax error."
    )
}

/// Parses a query; the error is the message Jira would answer with.
pub(crate) fn parse(jql: &str) -> Result<Query, String> {
    let tokens = tokens(jql)?;
    let mut rest = tokens.as_slice();
    let mut clauses = Vec::new();
    let mut order = Vec::new();
    while !rest.is_empty() {
        if rest[0].is_word("order") {
            if !rest.get(1).is_some_and(|by| by.is_word("by")) {
                return Err(syntax_error("'order'"));
            }
            order = sort_fields(&rest[2..])?;
            break;
        }
        let (clause, after) = clause(rest)?;
        clauses.push(clause);
        rest = after;
        match rest.first() {
            Some(and) if and.is_word("and") => rest = &rest[1..],
            Some(or) if or.is_word("or") => {
                return Err(
                    "Error in the JQL Query: the fake Jira only combines clauses with AND.".into(),
                );
            }
            Some(next) if !next.is_word("order") => {
                return Err(syntax_error(&format!("'{}'", next.text())));
            }
            _ => {}
        }
    }
    if clauses.is_empty() {
        return Err(
            "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
                .into(),
        );
    }
    Ok(Query { clauses, order })
}

fn clause(tokens: &[Token]) -> Result<(Clause, &[Token]), String> {
    let [Token::Word(field), Token::Operator(op), value, rest @ ..] = tokens else {
        let found = tokens.first().map(Token::text).unwrap_or_default();
        return Err(syntax_error(&format!("'{found}'")));
    };
    let comparison = match op.as_str() {
        "=" => Comparison::Equal,
        "!=" => Comparison::NotEqual,
        ">" => Comparison::After,
        ">=" => Comparison::AtOrAfter,
        "<" => Comparison::Before,
        "<=" => Comparison::AtOrBefore,
        other => return Err(syntax_error(&format!("'{other}'"))),
    };
    let value_text = value.text();
    match field.to_ascii_lowercase().as_str() {
        "assignee" => {
            let is_current_user = value.is_word("currentUser")
                && rest.first() == Some(&Token::Open)
                && rest.get(1) == Some(&Token::Close);
            if !is_current_user || comparison != Comparison::Equal {
                return Err(format!(
                    "Error in the JQL Query: the fake Jira knows only 'assignee = currentUser()', not 'assignee {op} {value_text}'."
                ));
            }
            Ok((Clause::AssignedToMe, &rest[2..]))
        }
        "statuscategory" => {
            let category = Category::named(&value_text).ok_or_else(|| {
                format!("The value '{value_text}' does not exist for the field 'statusCategory'.")
            })?;
            if !matches!(comparison, Comparison::Equal | Comparison::NotEqual) {
                return Err(format!(
                    "The operator '{op}' is not supported by the 'statusCategory' field."
                ));
            }
            Ok((Clause::StatusCategory(comparison, category), rest))
        }
        name @ ("updated" | "created") => {
            let time = date_value(&value_text).ok_or_else(|| {
                format!(
                    "Date value '{value_text}' for field '{name}' is invalid. Valid formats include: 'yyyy/MM/dd HH:mm', 'yyyy-MM-dd HH:mm', 'yyyy/MM/dd', 'yyyy-MM-dd', or a period format e.g. '-5d', '4w 2d'."
                )
            })?;
            let field = if name == "updated" {
                DateField::Updated
            } else {
                DateField::Created
            };
            Ok((Clause::Date(field, comparison, time), rest))
        }
        _ => Err(format!(
            "Field '{field}' does not exist or you do not have permission to view it."
        )),
    }
}

/// An absolute date (read as UTC, the user's time zone) or a period from now (`-5d`, `-2h`).
fn date_value(text: &str) -> Option<DateTime<Utc>> {
    for format in ["%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Some(time.and_utc());
        }
    }
    for format in ["%Y/%m/%d", "%Y-%m-%d"] {
        if let Ok(date) = NaiveDate::parse_from_str(text, format) {
            return Some(date.and_hms_opt(0, 0, 0)?.and_utc());
        }
    }
    let (amount, unit) = text.split_at(text.len().checked_sub(1)?);
    let amount: i64 = amount.parse().ok()?;
    let period = match unit {
        "w" => Duration::weeks(amount),
        "d" => Duration::days(amount),
        "h" => Duration::hours(amount),
        "m" => Duration::minutes(amount),
        _ => return None,
    };
    Some(Utc::now() + period)
}

fn sort_fields(tokens: &[Token]) -> Result<Vec<(SortField, bool)>, String> {
    let mut order = Vec::new();
    for part in tokens.split(|token| *token == Token::Comma) {
        let (field, direction) = match part {
            [field] => (field, None),
            [field, direction] => (field, Some(direction)),
            _ => return Err(syntax_error("the ORDER BY clause")),
        };
        let field = match field.text().to_ascii_lowercase().as_str() {
            "updated" => SortField::Updated,
            "created" => SortField::Created,
            "key" | "issuekey" => SortField::Key,
            other => {
                return Err(format!(
                    "Field '{other}' does not exist or you do not have permission to view it."
                ));
            }
        };
        let descending = match direction {
            None => false,
            Some(direction) if direction.is_word("asc") => false,
            Some(direction) if direction.is_word("desc") => true,
            Some(other) => return Err(syntax_error(&format!("'{}'", other.text()))),
        };
        order.push((field, descending));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_sync_query_reads_as_assigned_and_not_done() {
        let query =
            parse("assignee = currentUser() AND statusCategory != Done ORDER BY updated ASC")
                .unwrap();
        assert_eq!(
            query.clauses,
            vec![
                Clause::AssignedToMe,
                Clause::StatusCategory(Comparison::NotEqual, Category::Done)
            ]
        );
        assert_eq!(query.order, vec![(SortField::Updated, false)]);
    }

    #[test]
    fn an_incremental_query_reads_its_time_as_utc() {
        let query = parse(
            r#"assignee = currentUser() AND updated >= "2026/11/30 10:05" order by updated asc"#,
        )
        .unwrap();
        let expected = NaiveDate::from_ymd_opt(2026, 11, 30)
            .unwrap()
            .and_hms_opt(10, 5, 0)
            .unwrap()
            .and_utc();
        assert_eq!(
            query.clauses[1],
            Clause::Date(DateField::Updated, Comparison::AtOrAfter, expected)
        );
    }

    #[test]
    fn unknown_fields_and_or_are_refused() {
        assert!(
            parse("project = DEMO")
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(parse("assignee = currentUser() OR updated >= -1d").is_err());
        assert!(parse("ORDER BY updated").unwrap_err().contains("Unbounded"));
    }
}
