"""Test certificates: one CA type that issues what the TLS tests need (a listener's certificate
for 127.0.0.1 or a name, a client's), PEM files in the test's folder. Only for tests."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(
        now + dt.timedelta(days=1)
    )


def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


@dataclasses.dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def pem(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self,
        folder: Path,
        name: str,
        *,
        ip: str = "",
        dns: str = "",
        server: bool = True,
        client: bool = False,
    ) -> tuple[Path, Path]:
        """A certificate for ``name`` (with an IP or DNS subjectAltName; a server's, a
        client's or both) signed by this CA: its PEM file and its key's, under ``folder``."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usage += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        alt: list[x509.GeneralName] = []
        if ip:
            alt.append(x509.IPAddress(ipaddress.ip_address(ip)))
        if dns:
            alt.append(x509.DNSName(dns))
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        stem = f"{name}-{cert.serial_number % 10**8}"
        cert_path = folder / f"{stem}.crt"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, write_key(key, folder / f"{stem}.key")


def make_ca(name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, cert)


def write_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A new CA and a certificate for 127.0.0.1 it signs: the CA's, the certificate's and
    its key's PEM files (a TLS listener's, the SIEM collector's, or a client's)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca("test ca")
    cert, key = ca.issue(folder, "listener", ip="127.0.0.1", client=True)
    return ca.pem(folder / "ca.pem"), cert, key
