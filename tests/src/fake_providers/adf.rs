//! Atlassian Document Format, the JSON document Jira descriptions and Confluence task bodies
//! are written in (`{"type":"doc","version":1,"content":[…]}`).

use serde_json::{Value, json};

/// A document from plain text: blank lines separate paragraphs, "- " lines make bullet lists.
pub(crate) fn from_text(text: &str) -> Value {
    let mut blocks = Vec::new();
    for chunk in text.split("\n\n").filter(|chunk| !chunk.trim().is_empty()) {
        let lines: Vec<&str> = chunk.lines().collect();
        if lines.iter().all(|line| line.starts_with("- ")) {
            let items = lines
                .iter()
                .map(|line| json!({"type": "listItem", "content": [paragraph(vec![text_node(&line[2..])])]}))
                .collect::<Vec<_>>();
            blocks.push(json!({"type": "bulletList", "content": items}));
        } else {
            blocks.push(paragraph(vec![text_node(&lines.join(" "))]));
        }
    }
    document(blocks)
}

pub(crate) fn document(blocks: Vec<Value>) -> Value {
    json!({"type": "doc", "version": 1, "content": blocks})
}

pub(crate) fn paragraph(inlines: Vec<Value>) -> Value {
    json!({"type": "paragraph", "content": inlines})
}

pub(crate) fn text_node(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// An @-mention of a user.
pub(crate) fn mention(account_id: &str, name: &str) -> Value {
    json!({"type": "mention", "attrs": {"id": account_id, "text": format!("@{name}"), "accessLevel": ""}})
}

/// A date chip: the instant as milliseconds since the epoch, in a string.
pub(crate) fn date(epoch_ms: i64) -> Value {
    json!({"type": "date", "attrs": {"timestamp": epoch_ms.to_string()}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_and_bullets_become_their_own_blocks() {
        let doc = from_text("Intro line.\n\n- one\n- two");
        assert_eq!(doc["content"][0]["type"], "paragraph");
        assert_eq!(doc["content"][1]["type"], "bulletList");
        assert_eq!(
            doc["content"][1]["content"][1]["content"][0]["content"][0]["text"],
            "two"
        );
    }
}
