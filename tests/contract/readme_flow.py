"""The README's flow, driven through a client that openapi-python-client generated from the
API's own OpenAPI document (tests/tests/contract.rs generates it, then runs this with the
generated package `taskfleet_client` on PYTHONPATH and TASKFLEET_URL / TASKFLEET_KEY set).

Every answer is read through the generated models, so a field the document describes wrongly
(a null it does not allow, a status it does not list) fails here as it would for a user.
"""

import json
import os
import sys
import uuid
from http import HTTPStatus

from taskfleet_client import AuthenticatedClient
from taskfleet_client.api.connectors import create_connector
from taskfleet_client.api.events import stream_job_events
from taskfleet_client.api.fleet import get_me
from taskfleet_client.api.jobs import create_job, create_job_batch, get_job, list_jobs
from taskfleet_client.api.schedules import create_schedule, get_schedule
from taskfleet_client.models import (
    BatchRequest,
    ConnectorInput,
    ErrorBody,
    Job,
    JobEvent,
    JobPage,
    JobSpecAgentChat,
    JobSpecAgentPrioritise,
    JobSpecEmbedItems,
    JobSpecExecutorRun,
    JobSpecIngestConnector,
    JobSpecScheduleFire,
    JobSpecTestConnector,
    Me,
    Schedule,
    ScheduleInput,
)
from taskfleet_client.types import UNSET, Unset

TERMINAL = {"job_succeeded", "job_dead", "job_cancelled"}


def check(condition, what):
    if not condition:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def main():
    client = AuthenticatedClient(
        base_url=os.environ["TASKFLEET_URL"], token=os.environ["TASKFLEET_KEY"], timeout=30.0
    )

    me = get_me.sync_detailed(client=client)
    check(isinstance(me.parsed, Me) and me.parsed.tenant == "acme", f"GET /v1/me: {me.parsed}")

    connector = create_connector.sync_detailed(
        client=client,
        body=ConnectorInput.from_dict({"provider": "github", "token": "ghp_contract_test"}),
    )
    check(connector.status_code == HTTPStatus.CREATED, f"a token connector: {connector.content!r}")
    connector_id = str(connector.parsed.id)

    # Every kind is accepted and reads back as submitted, but two, refused with an error the
    # generated client reads as the document's error body: a chat message names one of the
    # tenant's conversations (POST /v1/chat starts them), and a firing is the scheduler's.
    accepted = {
        "executor.run": JobSpecExecutorRun.from_dict(
            {"kind": "executor.run", "tool": "markdown.format", "input": "Title\n===\n* a"}
        ),
        "ingest.connector": JobSpecIngestConnector.from_dict(
            {"kind": "ingest.connector", "connector_id": connector_id}
        ),
        "test.connector": JobSpecTestConnector.from_dict(
            {"kind": "test.connector", "connector_id": connector_id}
        ),
        "embed.items": JobSpecEmbedItems.from_dict(
            {"kind": "embed.items", "item_ids": [str(uuid.uuid4())]}
        ),
        "agent.prioritise": JobSpecAgentPrioritise.from_dict({"kind": "agent.prioritise"}),
    }
    ids = {}
    for kind, spec in accepted.items():
        created = create_job.sync_detailed(client=client, body=spec)
        check(
            created.status_code in (HTTPStatus.CREATED, HTTPStatus.OK)
            and isinstance(created.parsed, Job)
            and created.parsed.kind == kind,
            f"POST /v1/jobs {kind}: {created.status_code} {created.content!r}",
        )
        ids[kind] = created.parsed.id
        read = get_job.sync_detailed(client=client, id=created.parsed.id)
        check(
            isinstance(read.parsed, Job) and read.parsed.id == created.parsed.id,
            f"GET /v1/jobs/{{id}} reads the {kind} job back ({read.parsed.state})",
        )
    refused = {
        "agent.chat": (HTTPStatus.NOT_FOUND, JobSpecAgentChat.from_dict(
            {"kind": "agent.chat", "conversation_id": str(uuid.uuid4()), "message": "hi"}
        )),
        "schedule.fire": (HTTPStatus.UNPROCESSABLE_ENTITY, JobSpecScheduleFire.from_dict(
            {
                "kind": "schedule.fire",
                "schedule_id": str(uuid.uuid4()),
                "fire_at": "2030-01-01T00:00:00Z",
            }
        )),
    }
    for kind, (status, spec) in refused.items():
        answer = create_job.sync_detailed(client=client, body=spec)
        check(
            answer.status_code == status and isinstance(answer.parsed, ErrorBody),
            f"POST /v1/jobs {kind} is a {status.value}: {answer.parsed.message}",
        )

    batch = create_job_batch.sync_detailed(
        client=client,
        body=BatchRequest.from_dict(
            {"jobs": [{"kind": "executor.run", "tool": "noop"} for _ in range(5)]}
        ),
    )
    check(batch.status_code == HTTPStatus.CREATED, f"a batch of 5: {batch.content!r}")

    # Paging: two at a time to the end, each job once.
    seen, cursor = [], UNSET
    while True:
        page = list_jobs.sync_detailed(client=client, limit=2, cursor=cursor)
        check(isinstance(page.parsed, JobPage), f"GET /v1/jobs?limit=2: {page.content!r}")
        seen += [job.id for job in page.parsed.jobs]
        if not page.parsed.next_cursor:
            break
        cursor = page.parsed.next_cursor
    ours = set(ids.values()) | {job.id for job in batch.parsed.jobs}
    # The token connector's own first ingest is the eleventh.
    check(
        len(seen) == len(set(seen)) == 11 and ours <= set(seen),
        f"paged {len(seen)} jobs, each once, ours among them",
    )

    # The executor job's events, followed to its end: the request is the generated one, the
    # stream read event by event, each event's data read as the document's JobEvent.
    request = stream_job_events._get_kwargs(id=ids["executor.run"])
    events = []
    with client.get_httpx_client().stream(**request) as stream:
        check(stream.status_code == 200, "GET /v1/jobs/{id}/events opens")
        fields = {}
        for line in stream.iter_lines():
            if line:
                name, _, value = line.partition(":")
                if name:
                    fields[name] = value.removeprefix(" ")
                continue
            if "data" in fields:
                event = JobEvent.from_dict(json.loads(fields["data"]))
                check(event.event == fields["event"] and str(event.seq) == fields["id"],
                      f"event {event.seq} {event.event}")
                events.append(event.event)
                if event.event in TERMINAL:
                    break
            fields = {}
    check(events[0] == "job_enqueued" and events[-1] == "job_succeeded", f"events {events}")
    done = get_job.sync_detailed(client=client, id=ids["executor.run"]).parsed
    check(
        done.state.value == "succeeded" and "Title" in json.dumps(done.to_dict()["result"]),
        "the markdown job's result reads back",
    )

    schedule = create_schedule.sync_detailed(
        client=client,
        body=ScheduleInput.from_dict(
            {
                "name": "morning focus",
                "cron": "0 0 7 * * *",
                "time_zone": "Europe/Paris",
                "target": {"kind": "agent.prioritise"},
            }
        ),
    )
    check(
        schedule.status_code == HTTPStatus.CREATED and isinstance(schedule.parsed, Schedule),
        f"POST /v1/schedules: {schedule.content!r}",
    )
    read = get_schedule.sync_detailed(client=client, id=schedule.parsed.id)
    check(
        isinstance(read.parsed, Schedule) and not isinstance(read.parsed.next_fire_at, Unset),
        f"GET /v1/schedules/{{id}}: next firing {read.parsed.next_fire_at}",
    )


if __name__ == "__main__":
    main()
