//! Reading what `/metrics` endpoints expose: samples by name and labels, and promtool's lint.

use std::{
    collections::HashMap,
    io::Write,
    process::{Command, Stdio},
};

/// Parses `name{a="x",b="y"}` into its name and labels.
fn series(text: &str) -> (&str, HashMap<&str, &str>) {
    let Some((name, rest)) = text.split_once('{') else {
        return (text, HashMap::new());
    };
    let labels = rest
        .trim_end_matches('}')
        .split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key, value.trim_end_matches('"')))
        })
        .collect();
    (name, labels)
}

/// The sum of the samples of `name` whose labels include `labels` (0 when none).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series_text, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = series(series_text);
            let wanted = series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| series_labels.get(key) == Some(value));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The exposition served at `{base}/metrics`, checked to be Prometheus's text format.
pub async fn scrape(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    resp.text().await.unwrap()
}

/// Runs `promtool check metrics` on an exposition and returns what it reported; empty means
/// the metrics follow Prometheus's conventions.
pub fn promtool_problems(exposition: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package `prometheus`; make test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        report.trim().to_owned()
    } else {
        format!("promtool failed ({}): {report}", out.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{kind=\"a\",outcome=\"ok\"} 3\nx_total{kind=\"b\",outcome=\"ok\"} 4\n\
                    y 1.5\n";
        assert_eq!(sample(text, "x_total", &[("outcome", "ok")]), 7.0);
        assert_eq!(sample(text, "x_total", &[("kind", "b")]), 4.0);
        assert_eq!(sample(text, "y", &[]), 1.5);
        assert_eq!(sample(text, "x_total", &[("kind", "c")]), 0.0);
    }
}
