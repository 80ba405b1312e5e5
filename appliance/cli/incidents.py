"""Incidents for staff: ``incidents list [--json] [--state STATE] | ack ID | resolve ID
[--note CODE]``. An incident carries codes and counts, never what was said, so the list is not
audited; acknowledging and resolving are (who, when, the incident's id and kind)."""

from __future__ import annotations

import argparse

from appliance.cli.common import Commands, Row, actor, command, print_rows
from appliance.config.settings import Settings
from appliance.core.ports import IncidentState


def register(commands: Commands) -> None:
    incidents = commands.add_parser(
        "incidents", help="incidents opened by the distress path, floods and probing"
    )
    sub = incidents.add_subparsers(dest="incidents_command", required=True)
    listing = command(sub, "list", list_incidents, "the incidents, newest first", json_option=True)
    listing.add_argument("--state", choices=[s.value for s in IncidentState])
    command(sub, "ack", acknowledge, "you have the incident (acknowledged, audited)", "id")
    resolve = command(sub, "resolve", resolve_incident, "the incident was dealt with", "id")
    resolve.add_argument(
        "--note", help="a code saying how (false_alarm, called_back, ...): a code, not a text"
    )


def list_incidents(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage
    from appliance.storage.incidents import overdue_incidents

    state = IncidentState(args.state) if args.state else None
    with open_storage(settings) as storage:
        views = storage.incidents(state)
        late = overdue_incidents(storage, settings.incidents.response_minutes, storage.clock())
    overdue = {v.id for v in late}
    rows = [{**v.record(), "overdue": v.id in overdue} for v in views]

    def line(r: Row) -> str:
        late = " OVERDUE" if r["overdue"] else ""
        who = r["resolved_by"] or r["acknowledged_by"] or "-"
        return (
            f"{r['id']:36} {r['opened_at'][:19]:19} {r['severity']:6} {r['kind']:12} "
            f"{r['state']:12} {who:20} {r['summary']}{late}"
        )

    header = f"{'id':36} {'opened (UTC)':19} {'sev':6} {'kind':12} {'state':12} {'by':20} summary"
    if not rows and not args.json:
        print("no incidents")
        return 0
    return print_rows(rows, args.json, header, line)


def acknowledge(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        view = storage.acknowledge_incident(args.id, actor())
    print(f"{view.id}: acknowledged by {view.acknowledged_by}")
    return 0


def resolve_incident(args: argparse.Namespace, settings: Settings) -> int:
    from appliance.service import open_storage

    with open_storage(settings) as storage:
        view = storage.resolve_incident(args.id, actor(), args.note)
    note = f" ({view.resolution})" if view.resolution else ""
    print(f"{view.id}: resolved by {view.resolved_by}{note}")
    return 0
