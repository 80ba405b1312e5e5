"""Staff told of what needs them: each new callback request, by the configured notifier."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from appliance.core.errors import ApplianceError
from appliance.core.ports import CallbackDesk, StaffNotifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlertingDesk:
    """A ``CallbackDesk`` that tells staff of each request it stores (``[notify]
    staff_address``). The notice names the request's id only. A notice that cannot be sent is
    reported (``callback_notice`` failed, with the code) and the request stays stored: the
    caller was told it is, and staff still find it on the panel's Callbacks page."""

    desk: CallbackDesk
    notifier: StaffNotifier
    message: str
    """The notice, with ``{request}`` for the request's id."""
    report: Callable[[str, str, str], None]
    """(action, outcome, error code), for the audit trail."""

    def request_callback(self, call_id: str, caller: str | None, reason: str) -> str:
        request = self.desk.request_callback(call_id, caller, reason)
        try:
            self.notifier.tell_staff(self.message.format(request=request))
        except ApplianceError as exc:
            log.warning("staff were not told of a callback request: %s", exc.code)
            self.report("callback_notice", "failed", exc.code)
        else:
            self.report("callback_notice", "ok", "")
        return request
