"""The panel's own monitoring: ``/metrics`` (Prometheus text format, behind the scrape token
of ``[service] metrics_token_file``) and ``/healthz`` (no token: ``ok`` with 200 while the
store answers, 503 otherwise), on the panel's listener.

Its figures, in a registry of its own: requests answered by status class (counted here),
password log-ins by outcome and incidents by kind and state (read from the store at scrape
time, as the audit trail and the incident pages keep them), and the red-team gate's state.
Labels come from fixed sets only (a status class, an outcome, a gate status, an incident kind
with a runbook); never a user name, an address or a path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from flask import Blueprint, Response, request
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from appliance.admin.access import PUBLIC, requires
from appliance.compliance.gate import GateStatus, gate_state
from appliance.config.settings import Settings
from appliance.core.errors import ApplianceError, StorageError
from appliance.deploy.scrape import HEALTHY, OTHER, UNHEALTHY, ScrapeToken, incident_family
from appliance.storage import reports
from appliance.storage.repository import Storage

LOGIN_OUTCOMES = ("ok", "failed", "limited")
"""A password log-in's outcomes in the audit trail (admin/app.py ``login``)."""
GATE_UNKNOWN = "unknown"
"""The gate's state when its fingerprint cannot be read."""
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def metrics_blueprint(settings: Settings, storage: Storage) -> Blueprint:
    token = ScrapeToken.read(settings.service.metrics_token_file)
    registry = CollectorRegistry()
    requests = Counter(
        "appliance_panel_requests",
        "Requests the panel answered, by status class",
        ["status_class"],
        registry=registry,
    )
    failures = Counter(
        "appliance_storage_errors",
        "Store operations that failed: a scrape's read of the store",
        ["operation"],
        registry=registry,
    )
    registry.register(_PanelFigures(settings, storage, failures))
    blueprint = Blueprint("metrics", __name__)

    @blueprint.after_app_request
    def count(response: Response) -> Response:
        status_class = f"{response.status_code // 100}xx"
        requests.labels(status_class if status_class in STATUS_CLASSES else OTHER).inc()
        return response

    @blueprint.route("/metrics")
    @requires(*PUBLIC)
    def metrics() -> ResponseReturnValue:
        if not token.configured:
            return Response(b"not found\n", 404, content_type="text/plain; charset=utf-8")
        if not token.allows(request.headers.get("Authorization")):
            return Response(
                b"a scrape token is needed\n",
                401,
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                content_type="text/plain; charset=utf-8",
            )
        return Response(generate_latest(registry), 200, content_type=CONTENT_TYPE_LATEST)

    @blueprint.route("/healthz")
    @requires(*PUBLIC)
    def healthz() -> ResponseReturnValue:
        if reports.reachable(storage):
            return Response(HEALTHY, 200, content_type="text/plain; charset=utf-8")
        return Response(UNHEALTHY, 503, content_type="text/plain; charset=utf-8")

    return blueprint


class _PanelFigures(Collector):
    """What the panel reads at scrape time."""

    def __init__(self, settings: Settings, storage: Storage, failures: Counter) -> None:
        self.settings = settings
        self.storage = storage
        self.failures = failures

    def describe(self) -> Iterable[Metric]:
        return []  # nothing read at registration

    def collect(self) -> Iterator[Metric]:
        try:
            logins = reports.login_counts(self.storage)
            incidents = incident_family(self.storage, self.settings.incidents.runbooks)
        except StorageError:
            self.failures.labels("scrape").inc()
        else:
            family = CounterMetricFamily(
                "appliance_panel_logins",
                "Password log-ins to the panel, by outcome (from the audit trail)",
                labels=["outcome"],
            )
            counted = {outcome: 0 for outcome in (*LOGIN_OUTCOMES, OTHER)}
            for outcome, n in logins.items():
                counted[outcome if outcome in LOGIN_OUTCOMES else OTHER] += n
            for outcome, n in counted.items():
                family.add_metric([outcome], n)
            yield family
            yield incidents
        try:
            status = gate_state(self.settings, dt.datetime.now(dt.UTC)).status.value
        except ApplianceError:
            status = GATE_UNKNOWN
        gate = GaugeMetricFamily(
            "appliance_redteam_gate",
            "The red-team gate: 1 for its current status, 0 for the others",
            labels=["status"],
        )
        for each in (*(s.value for s in GateStatus), GATE_UNKNOWN):
            gate.add_metric([each], 1 if each == status else 0)
        yield gate
