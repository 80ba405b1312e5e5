"""One-time codes by e-mail through the organization's own SMTP relay ([notify]).

The relay is reached by its address (no name is looked up: deploy/egress.py) and only over
STARTTLS (RFC 3207), TLS 1.2 or later, its certificate checked against ``ca_file`` and
``server_name``. A relay that offers no STARTTLS, or whose certificate does not verify, gets
nothing: the code never travels in plain text. The message holds the code and how long it is
good, nothing about the caller or their account. Neither the code nor the address is logged;
an error names what failed, as a code (``notify.unreachable``, ``notify.no_starttls``,
``notify.certificate``, ...), and carries none of the relay's answer, which may quote the
recipient.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from appliance.config.secrets import read_owner_only
from appliance.config.settings import NotifySettings
from appliance.core.errors import ConfigError, NotifyError

_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
"""What ``appliance callers set-contact`` takes as an e-mail address (a number is for SMS)."""


class _RelayClient(smtplib.SMTP):
    """smtplib's client, connected to the relay's address, with TLS verifying the relay's
    name: smtplib checks the certificate against the host it was made with (``_host``)."""

    def __init__(self, server_name: str, timeout_s: float) -> None:
        # A local name given: smtplib would otherwise look this host's name up (getfqdn),
        # a lookup the egress guard refuses. The EHLO name is set once connected.
        super().__init__(local_hostname="localhost", timeout=timeout_s)
        self._host = server_name


@dataclass(frozen=True)
class SmtpNotifier:
    """The ``CodeNotifier`` over an SMTP relay: one connection per code, closed after it."""

    settings: NotifySettings

    def reaches(self, contact: str) -> bool:
        return bool(_ADDRESS.fullmatch(contact)) and contact.isprintable()

    def send(self, contact: str, code: str) -> None:
        if not self.reaches(contact):
            raise NotifyError("notify.not_an_address", "the contact is not an e-mail address")
        minutes = max(1, self.settings.code_ttl_s // 60)
        text = self.settings.message.format(code=code, minutes=minutes)
        self._deliver(self.message(contact, self.settings.subject, text))

    def tell_staff(self, text: str) -> None:
        """The ``StaffNotifier``: ``text`` to ``staff_address`` (a callback request's id)."""
        options = self.settings
        if not options.staff_address:
            raise NotifyError("notify.no_staff_address", "no notify.staff_address is set")
        self._deliver(self.message(options.staff_address, options.staff_subject, text))

    def _deliver(self, message: EmailMessage) -> None:
        options = self.settings
        password = read_password(options.password_file) if options.username else ""
        context = tls_context(options.ca_file)
        client = _RelayClient(options.server_name, options.timeout_s)
        # Each failure is translated without its cause (``from None``): smtplib's and the
        # relay's texts may quote the recipient, which must not reach a log or a traceback.
        try:
            client.connect(options.relay.strip("[]"), options.port)
            client.local_hostname = _address_literal(client)
            client.ehlo()
            if not client.has_extn("starttls"):
                raise NotifyError(
                    "notify.no_starttls", "the relay offers no STARTTLS; nothing was sent"
                )
            client.starttls(context=context)
            client.ehlo()
            if options.username:
                client.login(options.username, password)
            client.send_message(message)
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()  # the message is the relay's now: a lost goodbye unsends nothing
        except NotifyError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise NotifyError(
                "notify.certificate",
                f"the relay's certificate does not verify ({exc.verify_message}); nothing sent",
            ) from None
        except ssl.SSLError as exc:
            raise NotifyError("notify.tls", f"TLS with the relay failed ({exc.reason})") from None
        except smtplib.SMTPAuthenticationError:
            raise NotifyError("notify.auth", "the relay refused the login") from None
        except smtplib.SMTPNotSupportedError:
            raise NotifyError("notify.refused", "the relay does not support that") from None
        except smtplib.SMTPServerDisconnected as exc:
            if isinstance(exc.__context__, TimeoutError):  # smtplib's word for a read timing out
                raise NotifyError("notify.timeout", "the relay did not answer in time") from None
            raise NotifyError("notify.unreachable", "the relay closed the connection") from None
        except smtplib.SMTPException:
            raise NotifyError("notify.refused", "the relay refused the message") from None
        except TimeoutError:
            raise NotifyError("notify.timeout", "the relay did not answer in time") from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise NotifyError(
                "notify.unreachable", f"the relay is unreachable ({reason})"
            ) from None
        finally:
            client.close()

    def message(self, to: str, subject: str, text: str) -> EmailMessage:
        options = self.settings
        message = EmailMessage()
        message["From"] = options.from_address
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(usegmt=True)
        # With a domain given, make_msgid looks no name up (it would ask for this host's).
        domain = options.from_address.rpartition("@")[2]
        message["Message-ID"] = email.utils.make_msgid(domain=domain)
        message.set_content(text + "\n")
        return message


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Certificate and host name verified (the defaults of ``create_default_context``), TLS
    1.2 at least; only ``ca_file``'s CAs when one is given, else the system's."""
    try:
        context = ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "config.unreadable", f"notify.ca_file: cannot load {ca_file} ({exc})"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def read_password(path: str) -> str:
    """The relay password from an owner-only file, read at use (a rotation needs no restart);
    a file that group or others can read is refused, naming the key."""
    return read_owner_only(path, "notify.password_file")


def _address_literal(client: smtplib.SMTP) -> str:
    """This end's address as an EHLO address literal (RFC 5321 4.1.3): no name to look up."""
    sock = client.sock
    local = str(sock.getsockname()[0]) if sock is not None else "127.0.0.1"
    return f"[IPv6:{local}]" if ":" in local else f"[{local}]"
