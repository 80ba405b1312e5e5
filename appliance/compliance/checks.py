"""The compliance report: each control of GDPR, HIPAA, PCI DSS and SOC 2 that the appliance
answers for, mapped to the live probes that show it (probes.py), with the page that holds the
evidence. A control is as good as its worst reading."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance.compliance import probes
from appliance.compliance.probes import Finding, Live, Outcome, Probe
from appliance.config.settings import Settings
from appliance.storage.repository import Storage


@dataclass(frozen=True)
class Control:
    framework: str
    reference: str
    control: str
    page: str
    """The endpoint of the panel page that shows the evidence."""
    outcome: Outcome
    evidence: str
    reason: str
    read_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "reference": self.reference,
            "control": self.control,
            "page": self.page,
            "outcome": self.outcome.value,
            "evidence": self.evidence,
            "reason": self.reason,
            "read_at": self.read_at.isoformat(),
        }


# framework, reference, control, evidence page, the probes it rests on
CONTROLS: tuple[tuple[str, str, str, str, tuple[Probe, ...]], ...] = (
    ("GDPR", "Art. 5(1)(c), 25", "Data minimisation by default", "compliance.dataflow",
     (probes.minimisation,)),
    ("GDPR", "Art. 5(1)(e)", "Storage limitation", "compliance.retention", (probes.retention,)),
    ("GDPR", "Art. 17", "Right to erasure", "compliance.retention", (probes.erasure,)),
    ("GDPR", "Art. 13; EU AI Act Art. 50", "Transparency: AI disclosure and consent",
     "compliance.consent", (probes.disclosure,)),
    ("GDPR", "Art. 32", "Encryption at rest", "compliance.dataflow",
     (probes.database_cipher, probes.master_key_age)),
    ("HIPAA", "164.308(a)(7)", "Contingency plan: data backup", "pages.audit", (probes.backup,)),
    ("HIPAA", "164.308(a)(6)", "Security incident procedures", "compliance.incidents",
     (probes.incidents,)),
    ("HIPAA", "164.312(a)(1)", "Access control", "compliance.access_review",
     (probes.access_review,)),
    ("HIPAA", "164.312(b)", "Audit controls", "pages.audit", (probes.audit_chain,)),
    ("HIPAA", "164.312(c)(1)", "Integrity", "compliance.dataflow",
     (probes.database_cipher, probes.audit_chain)),
    ("HIPAA", "164.312(d)", "Person or entity authentication", "compliance.access_review",
     (probes.mfa,)),
    ("HIPAA", "164.312(e)(1)", "Transmission security", "compliance.dataflow",
     (probes.panel_tls, probes.sip_transport)),
    ("PCI DSS", "3.3 / 3.4", "No sensitive authentication data stored; PAN unreadable",
     "compliance.dataflow", (probes.redaction,)),
    ("PCI DSS", "8.4", "Multi-factor authentication", "compliance.access_review", (probes.mfa,)),
    ("PCI DSS", "10.2", "Audit logs", "pages.audit", (probes.audit_chain,)),
    ("SOC 2", "CC6.1", "Logical access: least privilege, reviewed", "compliance.access_review",
     (probes.access_review,)),
    ("SOC 2", "CC6.6", "Boundary: egress enforcement", "compliance.dataflow", (probes.egress,)),
    ("SOC 2", "CC7.2", "Monitoring: incidents answered in time", "compliance.incidents",
     (probes.incidents,)),
    ("SOC 2", "CC7.1", "Configuration hardening", "compliance.tools", (probes.unit_hardening,)),
    ("SOC 2", "CC8.1", "Change management: models pinned, red team passed for what runs",
     "compliance.redteam", (probes.model_pins, probes.redteam)),
    ("SOC 2", "CC9.2", "Vendor management: register and SBOM", "vendors.register_page",
     (probes.vendors,)),
)  # fmt: skip


def controls(settings: Settings, storage: Storage, now: datetime | None = None) -> list[Control]:
    """Every control, read now. A probe that breaks is a failed reading with its error type,
    never a pass; a probe shared by two controls is read once."""
    read_at = now or datetime.now(UTC)
    live = Live(settings, storage, read_at.astimezone(UTC).replace(tzinfo=None))
    readings: dict[Probe, Finding] = {}
    rows = []
    for framework, reference, name, page, used in CONTROLS:
        for probe in used:
            if probe not in readings:
                try:
                    readings[probe] = probe(live)
                except Exception as exc:
                    readings[probe] = Finding(
                        Outcome.FAIL, f"{probe.__name__}: could not be read", repr(exc)[:200]
                    )
        finding = probes.combine(*(readings[p] for p in used))
        rows.append(
            Control(
                framework, reference, name, page, finding.outcome, finding.evidence,
                finding.reason, read_at,
            )
        )  # fmt: skip
    return rows
