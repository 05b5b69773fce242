//! The offline demo's data set (`taskfleet-fake-providers --demo`): a week of plausible work
//! for one engineer, so the dashboard shows something worth looking at.

use super::draft::{Draft, Priority};

pub(crate) fn github_issues() -> Vec<Draft> {
    vec![
        Draft::new(
            "Retry storm when Redis fails over",
            "Workers reconnect all at once after a failover and the new primary falls over again.\n\n- add jitter to the reconnect backoff\n- cap concurrent reconnects per host",
            Some(2),
            &["bug", "reliability"],
        )
        .with_priority(Priority::Highest),
        Draft::new(
            "Dead-letter queue view paginates past the end",
            "Clicking next on the last page shows an empty table instead of disabling the button.",
            None,
            &["bug", "dashboard"],
        ),
        Draft::new(
            "Document the lease TTL trade-offs",
            "Operators keep asking how to pick --lease-ttl-ms. Write down what a short and a long TTL cost.",
            Some(9),
            &["docs"],
        )
        .with_priority(Priority::Low),
        Draft::new(
            "Schedules: support time zones other than UTC",
            "Customers in Sydney want their 9am job at 9am local time.\n\n- accept an IANA zone per schedule\n- show the next run in that zone",
            Some(14),
            &["enhancement"],
        ),
        Draft::new(
            "Flaky test: resuming SSE with Last-Event-ID",
            "Fails about one run in fifty on CI with a duplicate event.",
            None,
            &["flaky-test"],
        )
        .with_priority(Priority::High),
        Draft::new(
            "Upgrade sqlx to 0.8.3",
            "Picks up the fix for prepared statement leaks on connection reset.",
            Some(5),
            &["dependencies"],
        )
        .with_priority(Priority::Low),
        Draft::new(
            "Rate-limit the batch submit endpoint per tenant",
            "One tenant submitted 2M jobs in a minute last Tuesday and starved everyone else.",
            Some(3),
            &["api", "reliability"],
        )
        .with_priority(Priority::High),
        Draft::new(
            "Metrics: queue latency histogram has the wrong buckets",
            "Everything lands in the +Inf bucket because the buckets are in seconds and the samples in ms.",
            None,
            &["bug", "observability"],
        ),
        Draft::new(
            "Add a `taskfleet-api keys list` command",
            "Operators cannot see which keys exist without reading the database.",
            Some(12),
            &["cli"],
        ),
        Draft::new(
            "Worker shutdown waits for the full lease before exiting",
            "SIGTERM should hand running jobs back instead of waiting out the lease.",
            Some(-1),
            &["bug"],
        )
        .with_priority(Priority::High),
        Draft::new(
            "Billing: invoice PDF renders totals in the wrong currency",
            "EUR customers see USD totals on the PDF; the web page is right.",
            Some(1),
            &["bug", "customer"],
        )
        .with_priority(Priority::Highest),
        Draft::new(
            "Web app: remember the last selected tenant",
            "Switching tenants resets on every page load.",
            None,
            &["enhancement", "good first issue"],
        )
        .with_priority(Priority::Low),
    ]
}

pub(crate) fn github_review_requests() -> Vec<Draft> {
    vec![
        Draft::new(
            "Leader election: renew the lease before it is half gone",
            "Renewing at 50% of the TTL instead of 90% removes the leadership gaps seen in the chaos tests.",
            None,
            &["reliability"],
        ),
        Draft::new(
            "Add per-queue pause to the dashboard",
            "Adds a pause/resume toggle next to each queue, behind the operator role.",
            None,
            &["dashboard"],
        ),
        Draft::new(
            "Billing: retry failed card payments with backoff",
            "Dunning now retries after 1, 3 and 7 days instead of once.",
            Some(2),
            &["billing"],
        )
        .with_priority(Priority::High),
    ]
}

pub(crate) fn jira_issues() -> Vec<Draft> {
    vec![
        // Support filed the GitHub issue's bug again here: the pipeline shows it once.
        Draft::new(
            "Billing: invoice PDF renders totals in the wrong currency",
            "EUR customers see USD totals on the PDF; the web page is right.",
            Some(1),
            &["customer"],
        )
        .with_priority(Priority::High),
        Draft::new(
            "Q3 capacity plan for the job fleet",
            "Estimate worker and Redis capacity for the Q3 traffic forecast.\n\n- collect last quarter's peak throughput\n- size the Redis cluster for 2x headroom\n- review with SRE",
            Some(6),
            &["planning"],
        )
        .with_priority(Priority::High),
        Draft::new(
            "Migrate nightly exports to the new scheduler",
            "The cron box is being decommissioned at the end of the month.",
            Some(10),
            &["migration"],
        ),
        Draft::new(
            "Security review: API key hashing",
            "Security asked for a review of how API keys are stored before the SOC 2 audit.\n\n- document the hash and salt\n- confirm keys never reach the logs",
            Some(4),
            &["security", "audit"],
        )
        .with_priority(Priority::Highest),
        Draft::new(
            "Customer escalation: jobs stuck in scheduled state",
            "Acme Corp reports jobs scheduled for 02:00 never ran on Sunday (DST change).",
            Some(1),
            &["customer", "escalation"],
        )
        .with_priority(Priority::Highest),
        Draft::new(
            "Write the runbook for Postgres failover",
            "On-call needs a step-by-step for promoting the replica and repointing the fleet.",
            Some(8),
            &["runbook"],
        ),
        Draft::new(
            "Onboard the data team to the batch API",
            "Pairing session and a short guide for submitting their ETL jobs.",
            Some(12),
            &[],
        )
        .with_priority(Priority::Low),
        Draft::new(
            "Reduce p99 dispatch latency below 50 ms",
            "Current p99 is 180 ms under load. Profile the dispatcher and the Redis round trips.",
            None,
            &["performance"],
        )
        .with_priority(Priority::High),
        Draft::new(
            "Clean up feature flags older than six months",
            "Twelve flags have been fully rolled out since spring.",
            Some(20),
            &["tech-debt"],
        )
        .with_priority(Priority::Low),
    ]
}

pub(crate) fn confluence_tasks() -> Vec<Draft> {
    vec![
        Draft::new(
            "Send the incident review notes to the customer",
            "",
            Some(1),
            &[],
        ),
        Draft::new(
            "Add the capacity numbers to the planning page",
            "",
            Some(5),
            &[],
        ),
        Draft::new("Review the on-call rotation for December", "", Some(3), &[]),
        Draft::new(
            "Update the architecture diagram with the new scheduler",
            "",
            None,
            &[],
        ),
        Draft::new("Book the retro room for the release", "", Some(7), &[]),
    ]
}

pub(crate) fn gmail_messages() -> Vec<Draft> {
    vec![
        Draft::new(
            "Can you review the Q3 capacity numbers before Thursday?",
            "Hi, I've put the draft numbers on the planning page. Could you sanity-check the Redis sizing before Thursday's review? Thanks!",
            Some(3),
            &[],
        )
        .with_priority(Priority::High),
        Draft::new(
            "Re: Acme escalation - jobs not running after DST",
            "Their account manager is asking for an update today. Do we have a root cause yet?",
            Some(0),
            &[],
        )
        .with_priority(Priority::Highest),
        Draft::new(
            "Your invoice for November is ready",
            "Your invoice INV-2291 for November is available in the billing portal.",
            None,
            &[],
        )
        .by("Acme Billing", "billing@acme.example")
        .with_priority(Priority::Low),
        Draft::new(
            "Interview feedback needed: backend candidate",
            "Please submit your feedback for yesterday's system design interview by end of day.",
            Some(0),
            &[],
        )
        .by("Recruiting", "recruiting@example.com")
        .with_priority(Priority::High),
        Draft::new(
            "Offsite agenda - please add your topics",
            "The agenda doc is open for topics until Friday.",
            Some(4),
            &[],
        ),
        Draft::new(
            "[acme/taskfleet] Leader election: renew the lease earlier (#214)",
            "mona-lisa requested your review on this pull request.",
            None,
            &[],
        )
        .by("mona-lisa", "notifications@github.com"),
        Draft::new(
            "Security audit: evidence due next week",
            "We need screenshots of the key rotation procedure and the access review by next Wednesday.",
            Some(6),
            &[],
        )
        .with_priority(Priority::High),
        Draft::new(
            "Lunch & learn: observability with Prometheus",
            "Join us Thursday at noon. Pizza provided.",
            None,
            &[],
        )
        .by("People Team", "people@example.com")
        .with_priority(Priority::Low),
        Draft::new(
            "Quick question about the batch API limits",
            "Is there a maximum batch size? We're planning to submit 50k jobs at once.",
            None,
            &[],
        ),
        Draft::new(
            "Reminder: expense reports due Friday",
            "Please file your November expenses by Friday so they make this pay cycle.",
            Some(2),
            &[],
        )
        .by("Finance", "finance@example.com")
        .with_priority(Priority::Low),
    ]
}

pub(crate) fn drive_files() -> Vec<Draft> {
    vec![
        Draft::new(
            "Q3 Capacity Plan",
            "Worker and Redis sizing for the Q3 forecast.",
            Some(6),
            &[],
        ),
        Draft::new(
            "Incident review - Redis failover retry storm",
            "Timeline, impact and follow-ups of the retry storm.",
            Some(2),
            &[],
        ),
        Draft::new(
            "Team OKRs H2",
            "Objectives and key results for the second half.",
            None,
            &[],
        ),
        Draft::new(
            "Acme Corp contract renewal",
            "Signed renewal with the updated SLA appendix.",
            None,
            &[],
        ),
        Draft::new(
            "Scheduler migration design",
            "Moving the nightly exports off the cron box.",
            Some(10),
            &[],
        ),
        Draft::new(
            "On-call handbook",
            "How to be on call for the job fleet.",
            None,
            &[],
        ),
    ]
}
