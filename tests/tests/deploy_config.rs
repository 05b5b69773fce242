//! The Prometheus configuration in `deploy/` is valid, and its alert rules fire when they
//! should (promtool's rule unit tests in `deploy/prometheus/alerts_test.yml`).

use std::process::Command;

use taskfleet_tests::repository;

fn promtool(args: &[&str]) {
    let dir = repository("deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool runs (Debian package `prometheus`; make test installs it)");
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_are_valid() {
    promtool(&["check", "rules", "alerts.yml"]);
}

#[test]
fn alert_rules_fire_on_their_conditions() {
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn scrape_configs_are_valid() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "config", "prometheus.compose.yml"]);
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_fleet_exports() {
    let path = repository("deploy/grafana/dashboards/taskfleet.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exported = std::fs::read_to_string(repository("telemetry/src/metrics.rs")).unwrap();
    let mut queried = Vec::new();
    collect_exprs(&dashboard, &mut queried);
    assert!(queried.len() >= 10, "the dashboard has its panels");
    for expr in queried {
        for name in metric_names(&expr) {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.contains(&format!("\"{base}\""))
                    || exported.contains(&format!("\"{name}\"")),
                "the dashboard queries `{name}`, which taskfleet does not export"
            );
        }
    }
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

/// The `taskfleet_*` names a PromQL expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    expr.match_indices("taskfleet_")
        .map(|(start, _)| {
            expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}
