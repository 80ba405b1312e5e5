"""One-time codes by text message, through the organization's own SMS gateway.

The gateway is one of the HTTP tools the configuration declares (``[notify] sms_tool`` names a
``[[tools.http]]`` entry, never one a caller can use): the message goes as JSON ``{"to": ...,
"text": ...}`` over the same TLS as every HTTP tool (the address pinned, the certificate
verified, mutual TLS when configured, tools/http.py). The gateway's answer is dropped. Neither
the code nor the number is logged; a failure is a NotifyError carrying the tool's error code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.config.settings import NotifySettings
from appliance.core.errors import ApplianceError, NotifyError
from appliance.core.ports import CodeNotifier

_NUMBER = re.compile(r"\+?[0-9]{7,15}")
"""A phone number as ``appliance callers set-contact`` keeps it (E.164, digits only)."""

SendText = Callable[[str, str], None]
"""(number, text): hands one message to the gateway, or raises an ApplianceError."""


@dataclass(frozen=True)
class SmsNotifier:
    """The ``CodeNotifier`` over the SMS gateway."""

    settings: NotifySettings
    send_text: SendText

    def reaches(self, contact: str) -> bool:
        return bool(_NUMBER.fullmatch(contact))

    def send(self, contact: str, code: str) -> None:
        if not self.reaches(contact):
            raise NotifyError("notify.not_a_number", "the contact is not a phone number")
        minutes = max(1, self.settings.code_ttl_s // 60)
        text = self.settings.sms_message.format(code=code, minutes=minutes)
        try:
            self.send_text(contact, text)
        except ApplianceError as exc:  # its message names the tool and what failed, no number
            raise NotifyError("notify.sms_failed", f"the SMS gateway failed ({exc.code})") from None


@dataclass(frozen=True)
class ByContact:
    """Several notifiers as one: a code goes by the first that reaches the contact (an e-mail
    address by the relay, a phone number by the SMS gateway)."""

    notifiers: Sequence[CodeNotifier]

    def reaches(self, contact: str) -> bool:
        return any(n.reaches(contact) for n in self.notifiers)

    def send(self, contact: str, code: str) -> None:
        for notifier in self.notifiers:
            if notifier.reaches(contact):
                notifier.send(contact, code)
                return
        raise NotifyError("notify.unreachable_contact", "no notifier reaches this contact")
