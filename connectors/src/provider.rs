//! The SaaS providers taskfleet connects to.

use poem_openapi::Enum;
use serde::{Deserialize, Serialize};

/// A provider; its wire name is also the `source_kind` of the tasks it yields.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Enum, Serialize, Deserialize,
)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Github,
    Jira,
    Confluence,
    Gmail,
    Gdrive,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::Github,
        Provider::Jira,
        Provider::Confluence,
        Provider::Gmail,
        Provider::Gdrive,
    ];

    /// The name people know it by, for messages ("GitHub rejected the token").
    pub fn display_name(self) -> &'static str {
        match self {
            Provider::Github => "GitHub",
            Provider::Jira => "Jira",
            Provider::Confluence => "Confluence",
            Provider::Gmail => "Gmail",
            Provider::Gdrive => "Google Drive",
        }
    }

    /// The wire name (`gdrive`): the metric label and the tasks' `source_kind`.
    pub fn name(self) -> String {
        taskfleet_jobs::wire::name(&self)
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.display_name())
    }
}
