"""The units' site drop-ins (``UNIT.d/site.conf``), written by ``scripts/install`` from the
site's configuration: each unit denies every address (``IPAddressDeny=any``) but those its
drop-in allows, and only the peers that unit talks to are there.

    python -m appliance.deploy.units CONFIG UNITS_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.config.settings import Settings, load_settings
from appliance.deploy.egress import allowlist

LOOPBACK = ("127.0.0.1", "127.0.0.1/32", "::1", "::1/128")
"""In every unit already."""


def _drop_in(source: str, lines: list[str], networks: list[str]) -> str:
    allowed = [f"IPAddressAllow={n}" for n in dict.fromkeys(networks) if n and n not in LOOPBACK]
    head = [f"# Written by scripts/install from {source}; do not edit.", "[Service]"]
    return "\n".join([*head, *lines, *allowed]) + "\n"


def site_drop_ins(settings: Settings) -> dict[str, str]:
    """Each unit's drop-in, by unit name."""
    store = [settings.storage.server_address]  # a PostgreSQL server on another machine
    directory = [settings.ldap.address[0]] if settings.ldap.enabled else []
    siem = [settings.siem.host] if settings.siem.enabled else []
    only_the_store = _drop_in("[storage] url", [], store)
    return {
        "appliance-voice.service": _drop_in(
            "[service], [sip], [notify], [tools] and [storage]",
            [f"MemoryMax={settings.service.memory_max}"],
            list(allowlist(settings)),  # peers, the relay, HTTP tools, the store's server
        ),
        "appliance-admin.service": _drop_in(
            "[service] admin_allow, [ldap] url and [storage] url",
            [],
            [*settings.service.admin_allow, *directory, *store],
        ),
        "appliance-siem.service": _drop_in(
            "[siem] collector and [storage] url", [], [*siem, *store]
        ),
        "appliance-retention.service": only_the_store,
        "appliance-backup.service": only_the_store,
    }


def write(config: Path, units: Path) -> list[Path]:
    written = []
    for unit, text in site_drop_ins(load_settings(config)).items():
        folder = units / f"{unit}.d"
        folder.mkdir(mode=0o755, exist_ok=True)
        path = folder / "site.conf"
        path.write_text(text)
        path.chmod(0o644)
        written.append(path)
    return written


if __name__ == "__main__":
    write(Path(sys.argv[1]), Path(sys.argv[2]))
