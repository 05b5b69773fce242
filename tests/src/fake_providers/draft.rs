//! What a seeded item says, whichever provider holds it: the numbered items tests count on
//! ("GitHub issue 17") and the hand-written ones of the demo (`demo.rs`).

use chrono::{Days, NaiveDate, Utc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Highest,
    High,
    Medium,
    Low,
}

impl Priority {
    /// Jira's name for it, which the other providers borrow for labels.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Highest => "Highest",
            Priority::High => "High",
            Priority::Medium => "Medium",
            Priority::Low => "Low",
        }
    }

    /// The id of Jira's default priority scheme.
    pub fn jira_id(self) -> &'static str {
        match self {
            Priority::Highest => "1",
            Priority::High => "2",
            Priority::Medium => "3",
            Priority::Low => "4",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Draft {
    title: String,
    /// Plain text; lines starting with "- " are bullet points.
    body: String,
    /// How often the item was edited since it was seeded (`touch`).
    revision: u32,
    pub due: Option<NaiveDate>,
    pub labels: Vec<String>,
    pub priority: Priority,
    /// Who wrote it (name, email) when the demo says so; otherwise providers take turns
    /// among their colleagues.
    pub author: Option<(&'static str, &'static str)>,
}

impl Draft {
    pub fn new(title: &str, body: &str, due_in_days: Option<i64>, labels: &[&str]) -> Draft {
        let today = Utc::now().date_naive();
        Draft {
            title: title.to_owned(),
            body: body.to_owned(),
            revision: 0,
            due: due_in_days.map(|days| today + chrono::Duration::days(days)),
            labels: labels.iter().map(|label| (*label).to_owned()).collect(),
            priority: Priority::Medium,
            author: None,
        }
    }

    pub fn with_priority(mut self, priority: Priority) -> Draft {
        self.priority = priority;
        self
    }

    pub fn by(mut self, name: &'static str, email: &'static str) -> Draft {
        self.author = Some((name, email));
        self
    }

    /// Item `number` of a test's data set: "Jira issue 3". One in three has a due date (some of
    /// them past), half have labels, priorities take turns.
    pub fn numbered(noun: &str, number: usize) -> Draft {
        let due = number
            .is_multiple_of(3)
            .then(|| Utc::now().date_naive() + Days::new((number % 10) as u64) - Days::new(2));
        let labels: &[&str] = match number % 4 {
            0 => &["bug"],
            2 => &["customer"],
            _ => &[],
        };
        Draft {
            title: format!("{noun} {number}"),
            body: format!(
                "Body of {noun} {number}: what needs doing and why.\n\n- check the current behaviour\n- write down what changes"
            ),
            revision: 0,
            due,
            labels: labels.iter().map(|label| (*label).to_owned()).collect(),
            priority: [
                Priority::High,
                Priority::Medium,
                Priority::Low,
                Priority::Highest,
            ][number % 4],
            author: None,
        }
    }

    pub fn title(&self) -> String {
        match self.revision {
            0 => self.title.clone(),
            revision => format!("{} (revised {revision})", self.title),
        }
    }

    pub fn body(&self) -> String {
        match self.revision {
            0 => self.body.clone(),
            revision => format!(
                "{}\n\nRevision {revision}: scope clarified after review.",
                self.body
            ),
        }
    }

    /// The first line of the body, for a snippet or a description.
    pub fn summary(&self) -> String {
        self.body().lines().next().unwrap_or_default().to_owned()
    }

    /// An edit: the title and the body change.
    pub fn revise(&mut self) {
        self.revision += 1;
    }
}
