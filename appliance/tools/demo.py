"""Example tools against a local demo data set, so the identity flow can be tried end to end."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.identity.factors import totp_secret_from_base32
from appliance.identity.levels import Assurance
from appliance.tools.registry import Param, Tool, ToolError

DEMO_DATA = Path(__file__).parent / "demo_data.json"


class DemoBank:
    """Accounts and appointments of a few fictional callers (appliance/tools/demo_data.json)."""

    def __init__(self, path: Path = DEMO_DATA) -> None:
        self.data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        self.bookings: list[dict[str, str]] = []
        self.transfers: list[str] = []

    def balance(self, caller: str, args: Mapping[str, Any]) -> str:
        account = self.data["accounts"].get(caller)
        if account is None:
            raise ToolError("tools.not_found", "no account for this caller")
        return f"Your {account['type']} account balance is {account['balance']} pounds."

    def book(self, caller: str, args: Mapping[str, Any]) -> str:
        slot = f"{args['date'].isoformat()} {args['time']}"
        if slot in self.data["booked_slots"]:
            raise ToolError("tools.unavailable", "that slot is taken")
        self.bookings.append({"caller": caller, "slot": slot, "branch": args["branch"]})
        return f"Your appointment at {args['branch']} is booked for {slot}."

    def pin(self, caller: str) -> tuple[bytes, bytes] | None:
        entry = self.data.get("credentials", {}).get(caller, {}).get("pin_scrypt")
        if not entry:
            return None
        salt, digest = entry.split(":")
        return bytes.fromhex(salt), bytes.fromhex(digest)

    def totp_secret(self, caller: str) -> bytes | None:
        entry = self.data.get("credentials", {}).get(caller, {}).get("totp_base32")
        return totp_secret_from_base32(entry) if entry else None

    def transfer(self, caller: str, args: Mapping[str, Any]) -> str:
        self.transfers.append(caller)
        return "I'm transferring you to a member of our team now."


def demo_tools(bank: DemoBank) -> dict[str, Tool]:
    tools = [
        Tool(
            name="account_balance",
            description="Tell the authenticated caller the balance of their own account.",
            params=(),
            scopes=("accounts:read",),
            changes_data=False,
            required_level=Assurance.TWO_FACTORS,
            handler=bank.balance,
            triggers=("balance", "how much money", "how much is in my account"),
        ),
        Tool(
            name="book_appointment",
            description="Book an appointment for the caller at a branch.",
            params=(
                Param("date", "date", "the day, YYYY-MM-DD"),
                Param("time", "choice", "the time", choices=("09:00", "11:00", "14:00", "16:00")),
                Param(
                    "branch",
                    "choice",
                    "the branch",
                    choices=("Main Street", "Riverside", "Old Town"),
                ),
            ),
            scopes=("appointments:write",),
            changes_data=True,
            required_level=Assurance.ONE_FACTOR,
            handler=bank.book,
            triggers=("appointment", "book", "booking"),
        ),
        Tool(
            name="transfer_to_human",
            description="Transfer the call to a member of staff.",
            params=(Param("reason", "choice", "why", choices=("request", "complaint", "other")),),
            scopes=("calls:transfer",),
            changes_data=False,
            required_level=Assurance.ANONYMOUS,
            handler=bank.transfer,
            triggers=("human", "real person", "agent", "staff", "someone", "transfer me"),
        ),
    ]
    return {tool.name: tool for tool in tools}
