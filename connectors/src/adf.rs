//! Atlassian Document Format (Jira descriptions, Confluence task bodies) flattened to plain
//! text: the text of every node, blocks on lines of their own.

use serde_json::Value;

/// The text of an ADF document (or of any ADF node).
pub fn to_text(node: &Value) -> String {
    let mut out = String::new();
    write(node, &mut out);
    out.lines()
        .map(str::trim_end)
        .filter(|line| !line.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

fn write(node: &Value, out: &mut String) {
    let attr = |name: &str| {
        node.pointer(&format!("/attrs/{name}"))
            .and_then(Value::as_str)
    };
    match node.get("type").and_then(Value::as_str).unwrap_or("") {
        "text" => out.push_str(node.get("text").and_then(Value::as_str).unwrap_or("")),
        "hardBreak" => out.push('\n'),
        // A mention's text is "@Name"; an emoji's is the character itself.
        "mention" | "emoji" | "status" | "date" => {
            out.push_str(attr("text").or_else(|| attr("shortName")).unwrap_or(""))
        }
        "inlineCard" | "blockCard" => out.push_str(attr("url").unwrap_or("")),
        kind => {
            let block = matches!(
                kind,
                "paragraph"
                    | "heading"
                    | "listItem"
                    | "taskItem"
                    | "decisionItem"
                    | "codeBlock"
                    | "blockquote"
                    | "panel"
                    | "rule"
                    | "tableRow"
                    | "mediaSingle"
            );
            // A list item's paragraph stays on the item's line.
            if block && !out.is_empty() && !out.ends_with('\n') && !out.ends_with("- ") {
                out.push('\n');
            }
            if kind == "listItem" || kind == "taskItem" {
                out.push_str("- ");
            }
            for child in node
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                write(child, out);
                if kind == "tableRow" {
                    out.push_str(" | ");
                }
            }
            if block {
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn paragraphs_lists_and_inline_nodes_become_lines_of_text() {
        let doc = json!({"type": "doc", "version": 1, "content": [
            {"type": "heading", "attrs": {"level": 2}, "content": [{"type": "text", "text": "Goal"}]},
            {"type": "paragraph", "content": [
                {"type": "text", "text": "Ship the "},
                {"type": "text", "text": "importer", "marks": [{"type": "strong"}]},
                {"type": "text", "text": " with "},
                {"type": "mention", "attrs": {"id": "1", "text": "@Ana"}},
                {"type": "hardBreak"},
                {"type": "text", "text": "by Friday "},
                {"type": "emoji", "attrs": {"shortName": ":rocket:", "text": "🚀"}}
            ]},
            {"type": "bulletList", "content": [
                {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "tests"}]}]},
                {"type": "listItem", "content": [{"type": "paragraph", "content": [{"type": "text", "text": "docs"}]}]}
            ]},
            {"type": "paragraph", "content": [{"type": "inlineCard", "attrs": {"url": "https://x.test/1"}}]}
        ]});
        assert_eq!(
            super::to_text(&doc),
            "Goal\nShip the importer with @Ana\nby Friday 🚀\n- tests\n- docs\nhttps://x.test/1"
        );
    }
}
