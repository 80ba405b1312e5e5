"""Example tools against a local demo data set, so the identity flow can be tried end to end."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import json
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from appliance.identity.factors import totp_secret_from_base32
from appliance.identity.levels import Assurance
from appliance.tools.registry import Param, Tool, ToolError

DEMO_DATA = Path(__file__).parent / "demo_data.json"


class DemoBank:
    """Accounts and appointments of a few fictional callers (appliance/tools/demo_data.json).

    The appointments and bookings change as the tools run. With ``bookings_file`` they are
    kept in that JSON file (the demo configuration keeps it under APPLIANCE_HOME), read at
    each operation and written whole (a temporary file, then ``os.replace``), so they outlive
    the call and the process; a file that cannot be read as bookings is an error
    (``tools.demo.corrupt``) and is left as it is. Without one they live as long as this
    object."""

    def __init__(self, path: Path = DEMO_DATA, bookings_file: Path | None = None) -> None:
        self.data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        self.bookings_file = bookings_file
        self._state: dict[str, Any] = {
            "appointments": self.data.pop("appointments", {}),
            "bookings": [],
        }
        self._initial = copy.deepcopy(self._state)
        self.transfers: list[str] = []

    @property
    def bookings(self) -> list[dict[str, str]]:
        """Every booking and move made, oldest first."""
        return list(self._read()["bookings"])

    def balance(self, caller: str, args: Mapping[str, Any]) -> str:
        account = self.data["accounts"].get(caller)
        if account is None:
            raise ToolError("tools.not_found", "no account for this caller")
        return f"Your {account['type']} account balance is {account['balance']} pounds."

    def book(self, caller: str, args: Mapping[str, Any]) -> str:
        done = self.reserve(caller, args)
        return f"Your appointment at {done['branch']} is booked for {done['when']}."

    def move(self, caller: str, args: Mapping[str, Any]) -> str:
        done = self.reschedule(caller, args)
        return f"Your appointment at {done['branch']} is moved to {done['when']}."

    def cancel(self, caller: str, args: Mapping[str, Any]) -> str:
        done = self.release(caller)
        return f"Your appointment at {done['branch']} on {done['when']} is cancelled."

    def reserve(self, caller: str, args: Mapping[str, Any]) -> dict[str, str]:
        """Book ``args`` (date, time, branch): the appointment made."""
        with self._change() as state:
            slot = _free_slot(state, self.data, args)
            state["bookings"].append({"caller": caller, "slot": slot, "branch": args["branch"]})
            _appointments(state, caller).append({"slot": slot, "branch": args["branch"]})
        return _done(args["branch"], slot)

    def reschedule(self, caller: str, args: Mapping[str, Any]) -> dict[str, str]:
        """Move the caller's next appointment to ``args`` (date, time): where it is now."""
        with self._change() as state:
            current = _next_appointment(state, caller)
            slot = _free_slot(state, self.data, args)
            current["slot"] = slot
            state["bookings"].append({"caller": caller, "slot": slot, "branch": current["branch"]})
        return _done(current["branch"], slot)

    def release(self, caller: str) -> dict[str, str]:
        """Cancel the caller's next appointment: the one cancelled."""
        with self._change() as state:
            current = _next_appointment(state, caller)
            _appointments(state, caller).remove(current)
        return _done(current["branch"], current["slot"])

    def appointments(self, caller: str) -> list[dict[str, str]]:
        return list(self._read()["appointments"].get(caller, []))

    @contextlib.contextmanager
    def _change(self) -> Iterator[dict[str, Any]]:
        """The state to change; kept (written) only when the change raised nothing."""
        with _LOCK:  # the calls of one process take turns with the file
            state = copy.deepcopy(self._read())
            yield state
            self._write(state)

    def _read(self) -> dict[str, Any]:
        if self.bookings_file is None:
            return self._state
        path = self.bookings_file
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return copy.deepcopy(self._initial)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _corrupt(path, type(exc).__name__) from exc
        if not (
            isinstance(state, dict)
            and isinstance(state.get("appointments"), dict)
            and isinstance(state.get("bookings"), list)
        ):
            raise _corrupt(path, "not an object with appointments and bookings")
        return state

    def _write(self, state: dict[str, Any]) -> None:
        if self.bookings_file is None:
            self._state = state
            return
        path = self.bookings_file
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(descriptor, "w", encoding="utf-8") as file:  # mode 0600
                    json.dump(state, file, indent=1)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)  # the old file or the new one, never half of one
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise ToolError(
                "tools.demo.unwritable", f"cannot write the demo bookings to {path}"
            ) from exc

    def pin(self, caller: str) -> tuple[bytes, bytes] | None:
        entry = self.data.get("credentials", {}).get(caller, {}).get("pin_scrypt")
        if not entry:
            return None
        salt, digest = entry.split(":")
        return bytes.fromhex(salt), bytes.fromhex(digest)

    def totp_secret(self, caller: str) -> bytes | None:
        entry = self.data.get("credentials", {}).get(caller, {}).get("totp_base32")
        return totp_secret_from_base32(entry) if entry else None

    def contact(self, caller: str) -> str | None:
        """The demo callers get no out-of-band code: nothing is sent anywhere."""
        return None

    def transfer(self, caller: str, args: Mapping[str, Any]) -> str:
        """The request for a person, checked and audited like any tool call. It transfers
        nothing itself: the agent announces a transfer only when the call's line can make one
        (tools/agent.py), and what the caller hears comes from the transfer's real outcome."""
        self.transfers.append(caller)
        return ""


_LOCK = threading.Lock()


def _corrupt(path: Path, reason: str) -> ToolError:
    return ToolError(
        "tools.demo.corrupt",
        f"the demo bookings file {path} cannot be read ({reason}); it is left as it is: "
        "mend or remove it",
    )


def _appointments(state: dict[str, Any], caller: str) -> list[dict[str, str]]:
    booked: dict[str, list[dict[str, str]]] = state["appointments"]
    return booked.setdefault(caller, [])


def _next_appointment(state: dict[str, Any], caller: str) -> dict[str, str]:
    upcoming = sorted(_appointments(state, caller), key=lambda a: a["slot"])
    if not upcoming:
        raise ToolError("tools.not_found", "the caller has no appointment")
    return upcoming[0]


def _free_slot(state: dict[str, Any], data: Mapping[str, Any], args: Mapping[str, Any]) -> str:
    day: dt.date = args["date"]
    if day.weekday() == 6:
        raise ToolError("tools.unavailable", "branches are closed on Sunday")
    if day.weekday() == 5 and args["time"] not in ("11:00",):
        raise ToolError("tools.unavailable", "on Saturday only 11:00 is inside opening hours")
    slot = f"{day.isoformat()} {args['time']}"
    booked = state["appointments"].values()
    taken = {a["slot"] for appointments in booked for a in appointments}  # anyone's
    if slot in data["booked_slots"] or slot in taken:
        raise ToolError("tools.unavailable", "that slot is taken")
    return slot


def _done(branch: str, slot: str) -> dict[str, str]:
    return {"branch": branch, "slot": slot, "when": _spoken(slot)}


def _spoken(slot: str) -> str:
    """'2026-12-02 11:00' as a caller hears it: 'Wednesday 2 December at 11 am'."""
    day = dt.date.fromisoformat(slot[:10])
    hour = int(slot[11:13])
    clock = f"{hour if hour <= 12 else hour - 12} {'am' if hour < 12 else 'pm'}"
    return f"{day.strftime('%A')} {day.day} {day.strftime('%B')} at {clock}"


_APPOINTMENT = r"\b(?:appointment|consultation|booking)s?\b"
_DAY = Param("date", "date", "the day, YYYY-MM-DD", ask="Which day would you like?")
_TIME = Param(
    "time",
    "choice",
    "the time",
    choices=("09:00", "11:00", "14:00", "16:00"),
    ask="Which time suits you: 9 am, 11 am, 2 pm or 4 pm?",
)


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
            triggers=(
                r"\bbalance\b",
                r"\bhow much (?:money )?(?:is|have i got|do i have) in my account\b",
            ),
        ),
        Tool(
            name="book_appointment",
            description="Book an appointment for the caller at a branch.",
            params=(
                _DAY,
                _TIME,
                Param(
                    "branch",
                    "choice",
                    "the branch",
                    choices=("Main Street", "Riverside", "Old Town"),
                    ask="Which branch: Main Street, Riverside or Old Town?",
                ),
            ),
            scopes=("appointments:write",),
            changes_data=True,
            required_level=Assurance.ONE_FACTOR,
            handler=bank.book,
            triggers=(
                r"\b(?:book|make|schedule|arrange|set up)\b.{0,40}" + _APPOINTMENT,
                r"\bbook me in\b",
                r"\b(?:anything|something|a slot|an appointment|any appointments?) "
                r"(?:free|available)\b",
                r"\b(?:is there|have you got|do you have) (?:a|any) (?:slot|appointment)s?\b",
            ),
        ),
        Tool(
            name="move_appointment",
            description="Move the caller's next appointment to another day and time.",
            params=(
                dataclasses.replace(_DAY, ask="Which day would you like to move it to?"),
                _TIME,
            ),
            scopes=("appointments:write",),
            changes_data=True,
            required_level=Assurance.ONE_FACTOR,
            handler=bank.move,
            triggers=(
                r"\b(?:move|change|reschedule|rearrange|postpone|push|bring forward)\b.{0,40}"
                + _APPOINTMENT,
            ),
        ),
        Tool(
            name="cancel_appointment",
            description="Cancel the caller's next appointment.",
            params=(),
            scopes=("appointments:write",),
            changes_data=True,
            required_level=Assurance.ONE_FACTOR,
            handler=bank.cancel,
            triggers=(r"\bcancel\b.{0,40}" + _APPOINTMENT, _APPOINTMENT + r".{0,30}\bcancel"),
        ),
        Tool(
            name="transfer_to_human",
            description="Transfer the call to a member of staff.",
            params=(
                Param(
                    "reason",
                    "choice",
                    "why",
                    choices=("request", "complaint", "other"),
                    required=False,
                ),
            ),
            scopes=("calls:transfer",),
            changes_data=False,
            required_level=Assurance.ANONYMOUS,
            handler=bank.transfer,
            triggers=(
                # "to" optional: speech recognition drops it now and then ("speak a person")
                r"\b(?:speak|talk|chat) (?:(?:to|with) )?(?:a |an |the |some )?"
                r"(?:real |actual |live )?"
                r"(?:person|human|someone|somebody|agent|advis[eo]r|staff|operator|manager|"
                r"member of (?:staff|the team))\b",
                r"\b(?:put me through|transfer me|connect me|get me (?:a|someone|somebody))\b",
                r"\boperator\b",
            ),
        ),
    ]
    return {tool.name: tool for tool in tools}
