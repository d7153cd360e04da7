"""Test PKI made at test time: a CA and the server/client certificates it signs, as PEM files.

`make_ca(dir, name)` writes `<name>.crt`/`<name>.key`; `CA.issue(dir, stem, names, ...)` writes
`<stem>.crt`/`<stem>.key` (PKCS#8 keys, ECDSA P-256 or RSA 2048) signed by that CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA", "make_ca"]


def _new_key(kind: str):
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key must be 'ec' or 'rsa', not {kind!r}")


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _san(names):
    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


class CA:
    """A certificate authority that signs leaf certificates; `cert_path` is its PEM certificate."""

    def __init__(self, name: str, cert: x509.Certificate, key, cert_path: Path, key_path: Path):
        self.name = name
        self.cert = cert
        self.key = key
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, dir, stem: str, names=("127.0.0.1", "localhost"), client: bool = True,
              server: bool = True, key: str = "ec", common_name: str | None = None):
        """Sign a leaf for `names` (DNS names or IPs); returns (cert_path, key_path)."""
        dir = Path(dir)
        leaf_key = _new_key(key)
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if not usages:
            raise ValueError("a leaf must be usable as client, server or both")
        builder = (
            x509.CertificateBuilder()
            # common_name="" leaves the subject empty (etcd's gateway refuses a client
            # certificate with a CN once auth is enabled)
            .subject_name(x509.Name([] if common_name == "" else
                                    [x509.NameAttribute(NameOID.COMMON_NAME, common_name or stem)]))
            .issuer_name(self.cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=(key == "rsa"), content_commitment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = dir / f"{stem}.crt", dir / f"{stem}.key"
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(key_path, _key_pem(leaf_key), private=True)
        return cert_path, key_path


def make_ca(dir, name: str = "ca") -> CA:
    """A new self-signed CA (ECDSA P-256) written to `<dir>/<name>.crt` and `<dir>/<name>.key`."""
    dir = Path(dir)
    key = _new_key("ec")
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"lifeboat test CA {name}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_encipherment=False, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir / f"{name}.crt", dir / f"{name}.key"
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _key_pem(key), private=True)
    return CA(name, cert, key, cert_path, key_path)
