"""Failure notifications: a Prefect automation POSTs :data:`PAYLOAD` to a webhook when a run
tagged :data:`NIGHTLY_TAG` ends Failed (``TimedOut`` included) or Crashed. ``make deploy`` runs
``python -m segstyle.flows.notify``: it saves ``$SEGSTYLE_NOTIFY_WEBHOOK`` as the Webhook block and
creates or updates the automation (unset: changes nothing, says how to turn them on).
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Sequence
from datetime import timedelta
from typing import cast
from uuid import UUID

from prefect.automations import AutomationCore, CallWebhook, EventTrigger, Posture
from prefect.blocks.webhook import Webhook
from prefect.client.orchestration import get_client
from prefect.types import SecretDict
from pydantic import SecretStr

WEBHOOK_ENV = "SEGSTYLE_NOTIFY_WEBHOOK"
AUTOMATION_NAME = "segstyle-nightly-failure"
NIGHTLY_TAG = "nightly"  # prefect.yaml's nightly deployments tag their runs with it
FAILED_STATE_TYPES = ("FAILED", "CRASHED")
#: The webhook's JSON body, a Jinja template of the triggering run (Slack shows ``text``).
PAYLOAD = """{
  "text": {{ ("segstyle: " ~ flow_run.name ~ " (" ~ deployment.name ~ ") ended "
      ~ flow_run.state.name ~ ": " ~ flow_run.state.message) | tojson }},
  "flow_run": {{ flow_run.name | tojson }},
  "flow_run_id": "{{ flow_run.id }}",
  "deployment": {{ deployment.name | tojson }},
  "state": {{ flow_run.state.name | tojson }},
  "message": {{ flow_run.state.message | tojson }}
}"""

HOW_TO_ENABLE = (
    f"{WEBHOOK_ENV} is not set, so no failure notification was set up: set it to a webhook URL "
    f"(`make deploy {WEBHOOK_ENV}=https://hooks.slack.com/services/...`) to have failed or "
    f"crashed nightly runs reported there"
)


def failure_automation(webhook_block_id: UUID) -> AutomationCore:
    """The automation calling the Webhook block ``webhook_block_id``, once per run state."""
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(
            f"Calls the webhook of ${WEBHOOK_ENV} (the Webhook block {AUTOMATION_NAME!r}) when "
            f"a run tagged {NIGHTLY_TAG!r} ends Failed or Crashed. Written by `make deploy`."
        ),
        trigger=EventTrigger(
            expect={"prefect.flow-run.*"},
            match={
                "prefect.resource.id": "prefect.flow-run.*",
                "prefect.state-type": list(FAILED_STATE_TYPES),
            },
            match_related={
                "prefect.resource.role": "tag",
                "prefect.resource.id": f"prefect.tag.{NIGHTLY_TAG}",
            },
            for_each={"prefect.resource.id"},
            # the defaults, set: update_automation sends only the fields set, and needs these
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[CallWebhook(block_document_id=webhook_block_id, payload=PAYLOAD)],
    )


def check_webhook_url(url: str) -> str:
    """``url`` stripped; raises ``ValueError`` unless it is an absolute http(s) URL."""
    url = url.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{WEBHOOK_ENV} must be an http:// or https:// URL, not {url!r}")
    return url


def ensure_failure_webhook(webhook_url: str) -> UUID:
    """Save ``webhook_url`` (``ValueError`` unless http(s)) as the Webhook block and create the
    automation, or update the latest updated of that name (deleting the others); its id."""
    block = Webhook(
        url=SecretStr(check_webhook_url(webhook_url)),
        headers=SecretDict({"Content-Type": "application/json"}),
    )
    block_id = cast(UUID, block.save(AUTOMATION_NAME, overwrite=True))  # sync: no event loop
    automation = failure_automation(block_id)
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(AUTOMATION_NAME)  # latest updated first
        if not existing:
            return client.create_automation(automation)
        first, *duplicates = existing
        client.update_automation(first.id, automation)
        for duplicate in duplicates:
            client.delete_automation(duplicate.id)
        return first.id


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m segstyle.flows.notify``: apply :data:`WEBHOOK_ENV` (no arguments)."""
    if argv:
        print(f"usage: python -m segstyle.flows.notify (reads ${WEBHOOK_ENV})", file=sys.stderr)
        return 2
    url = os.environ.get(WEBHOOK_ENV, "").strip()
    if not url:
        print(HOW_TO_ENABLE)
        return 0
    try:
        automation_id = ensure_failure_webhook(url)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    print(
        f"failure notifications on: automation {AUTOMATION_NAME!r} ({automation_id}) calls "
        f"${WEBHOOK_ENV} when a run tagged {NIGHTLY_TAG!r} fails or crashes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
