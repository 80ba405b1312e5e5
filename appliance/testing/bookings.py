"""A small HTTPS service over the demo bookings (tools/demo.py ``DemoBank``), so the booking
operations can be exercised as HTTP tools (``[[tools.http]]``, tools/http.py) end to end.

    POST   /appointments/{caller}        {"date", "time", "branch"}  book
    PUT    /appointments/{caller}/next   {"date", "time"}            move the next one
    DELETE /appointments/{caller}/next                               cancel the next one

Each answers ``{"branch", "slot", "when"}`` (``when`` as a caller hears it); a slot that is
taken or outside opening hours is 409, no appointment 404, a malformed request 400. The TLS
context is the caller's to make (a test requires a client certificate with it).
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import ssl
import threading
from typing import Any
from urllib.parse import unquote

from appliance.config.settings import HttpParam, HttpTool
from appliance.tools.demo import DemoBank
from appliance.tools.registry import ToolError

_STATUS = {"tools.unavailable": 409, "tools.not_found": 404}


class BookingService:
    """The service on ``address`` (port 0: any free one) until ``close``."""

    def __init__(
        self, bank: DemoBank, context: ssl.SSLContext, address: tuple[str, int] = ("127.0.0.1", 0)
    ) -> None:
        self.bank = bank
        self.requests: list[tuple[str, str]] = []
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                service.requests.append((self.command, self.path))
                status, body = service.handle(self.command, self.path, self._body())
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    return json.loads(self.rfile.read(length)) if length else {}
                except ValueError:
                    return None

            do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the paths hold callers' numbers

        self._server = http.server.ThreadingHTTPServer(address, Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str]]:
        parts = path.split("?")[0].strip("/").split("/")
        if len(parts) < 2 or parts[0] != "appointments" or not isinstance(body, dict):
            return 400, {"error": "bad request"}
        caller = unquote(parts[1])
        route = (method, len(parts) == 3 and parts[2] == "next")
        try:
            if route == ("POST", False):
                return 201, self.bank.reserve(caller, _slot(body, branch=True))
            if route == ("PUT", True):
                return 200, self.bank.reschedule(caller, _slot(body, branch=False))
            if route == ("DELETE", True):
                return 200, self.bank.release(caller)
        except ToolError as exc:
            return _STATUS.get(exc.code, 500), {"error": exc.code}
        except (KeyError, TypeError, ValueError):
            return 400, {"error": "bad request"}
        return 404, {"error": "no such operation"}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> BookingService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _slot(body: dict[str, Any], *, branch: bool) -> dict[str, Any]:
    values: dict[str, Any] = {"date": dt.date.fromisoformat(body["date"]), "time": body["time"]}
    if branch:
        values["branch"] = str(body["branch"])
    return values


def booking_http_tools(host: str, port: int) -> tuple[HttpTool, ...]:
    """The demo booking tools declared as HTTP tools against a BookingService reached as
    ``host`` (a name of ``[tools] allowed_hosts``) on ``port``."""
    base = f"https://{host}:{port}/appointments/{{caller}}"
    day = HttpParam("date", "date", "the day, YYYY-MM-DD", ask="Which day would you like?")
    time = HttpParam(
        "time",
        "choice",
        "the time",
        choices=("09:00", "11:00", "14:00", "16:00"),
        ask="Which time suits you: 9 am, 11 am, 2 pm or 4 pm?",
    )
    branch = HttpParam(
        "branch",
        "choice",
        "the branch",
        choices=("Main Street", "Riverside", "Old Town"),
        ask="Which branch: Main Street, Riverside or Old Town?",
    )
    common: dict[str, Any] = {
        "scopes": ("appointments:write",),
        "required_level": 1,
        "changes_data": True,
    }
    return (
        HttpTool(
            name="http_book_appointment",
            description="Book an appointment for the caller at a branch.",
            method="POST",
            url=base,
            params=(day, time, branch),
            triggers=(r"\bbook\b.{0,40}\bappointment\b",),
            speak="Your appointment at {branch} is booked for {when}.",
            **common,
        ),
        HttpTool(
            name="http_move_appointment",
            description="Move the caller's next appointment to another day and time.",
            method="PUT",
            url=f"{base}/next",
            params=(day, time),
            triggers=(r"\bmove\b.{0,40}\bappointment\b",),
            retries=1,
            speak="Your appointment at {branch} is moved to {when}.",
            **common,
        ),
        HttpTool(
            name="http_cancel_appointment",
            description="Cancel the caller's next appointment.",
            method="DELETE",
            url=f"{base}/next",
            triggers=(r"\bcancel\b.{0,40}\bappointment\b",),
            speak="Your appointment at {branch} on {when} is cancelled.",
            **common,
        ),
    )
