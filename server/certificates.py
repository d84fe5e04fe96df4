"""Key material for a real deployment: a CA, the SuperLink's TLS certificate, SuperNode keys.

Why our own tool: Flower's docs generate these with openssl and ssh-keygen shell scripts, which
an edge team has to adapt by hand for every hostname. Here one command writes everything a
deployment needs, with the SuperLink's hostnames and IPs as subject alternative names (TLS
verification fails without them), and the SuperNode keys in the OpenSSH EC format that
``flwr supernode register`` and ``flower-supernode --auth-supernode-private-key`` read.

Layout written under ``--out`` (private keys are created with mode 0600):

    ca.crt, ca.key                 the certificate authority (keep ca.key offline)
    superlink.crt, superlink.key   the SuperLink's TLS certificate, signed by the CA
    supernode-K/node.key           SuperNode K's private key (stays on device K)
    supernode-K/node.pub           its public key (registered at the SuperLink)

The devices' identity keys for the secure sum are not made here: each device makes its own
(``fedmmrec deploy identity``, on the device) and only its public half leaves it; the operator
assembles the roster from those (``fedmmrec deploy roster``). Whoever runs the server must not
hold the devices' identity keys.
    export.key, export.pub         the key ``fedmmrec export --signing-key`` signs exports with
                                   (keep export.key with the server); every device gets
                                   export.pub and ``fedmmrec recommend --trusted-key`` refuses
                                   an export it did not sign

Existing files are never overwritten: a second run into the same folder is an error naming the
file, so a deployment's keys cannot be replaced by accident.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365
NODE_CURVE = ec.SECP384R1()  # a NIST curve, as `flwr supernode register` requires


@dataclass(frozen=True)
class DeploymentKeys:
    """Paths of the files :func:`write_deployment_keys` created."""

    ca_certificate: Path
    superlink_certificate: Path
    superlink_key: Path
    node_private_keys: list[Path]
    node_public_keys: list[Path]
    export_key: Path | None = None
    export_public_key: Path | None = None


def _write_new(path: Path, data: bytes, private: bool = False) -> None:
    """Create ``path`` (never overwrite); private keys get mode 0600 from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600 if private else 0o644)
    except FileExistsError:
        raise FileExistsError(f"{path}: already exists; refusing to overwrite deployment keys") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _subject_alt_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _certificate(subject: str, public_key, issuer: str, signing_key, *, ca: bool, hosts: list[str]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(_subject_alt_names(hosts), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA256())


def write_deployment_keys(out: str | Path, hosts: list[str], nodes: int) -> DeploymentKeys:
    """Create the CA, a SuperLink certificate valid for ``hosts``, and ``nodes`` SuperNode keys."""
    if not hosts:
        raise ValueError("at least one SuperLink hostname or IP is needed for the certificate")
    if nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {nodes}")
    out = Path(out)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("fedmmrec deployment CA", ca_key.public_key(), "fedmmrec deployment CA", ca_key, ca=True, hosts=[])
    link_key = ec.generate_private_key(ec.SECP256R1())
    link_cert = _certificate(hosts[0], link_key.public_key(), "fedmmrec deployment CA", ca_key, ca=False, hosts=hosts)
    files = DeploymentKeys(out / "ca.crt", out / "superlink.crt", out / "superlink.key", [], [])
    _write_new(files.ca_certificate, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_new(out / "ca.key", _pem_key(ca_key), private=True)
    _write_new(files.superlink_certificate, link_cert.public_bytes(serialization.Encoding.PEM))
    _write_new(files.superlink_key, _pem_key(link_key), private=True)
    for k in range(nodes):
        key = ec.generate_private_key(NODE_CURVE)
        private = out / f"supernode-{k}" / "node.key"
        public = out / f"supernode-{k}" / "node.pub"
        _write_new(private, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ), private=True)
        _write_new(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
        files.node_private_keys.append(private)
        files.node_public_keys.append(public)
    export_key = ec.generate_private_key(NODE_CURVE)
    _write_new(out / "export.key", _pem_key(export_key), private=True)
    _write_new(out / "export.pub", export_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))
    return dataclasses.replace(files, export_key=out / "export.key", export_public_key=out / "export.pub")
