"""The local cloud's certificates: a CA, the server's, and one per device.

Design
------
AWS IoT authenticates a device by the certificate it presents in the TLS
handshake; the local cloud does the same with a CA of its own.  ``LocalPki``
keeps every file as PEM in one directory (by default
``<state directory>/local-cloud``)::

    ca.pem  ca.key                   the local CA (10 years)
    server.pem  server.key           the broker's and the file server's
                                     certificate: localhost, 127.0.0.1, ::1
                                     and any extra host names asked for
    devices/<client id>.pem  .key    one certificate per client id, its
                                     common name the client id

Files are made on first use and reused while they are valid: parseable,
signed by the current CA, matching their key, not expiring within
``RENEW_BEFORE``, and (for the server) naming every host asked for.
Anything else is made anew; a new CA invalidates every certificate it
signed, which are then reissued when next asked for.  Private keys are
written with mode 0600, and every file is written to a temporary name and
renamed, so a reader never sees half a file.

Keys are ECDSA P-256: fast to make, and accepted by every TLS stack we use.

Known shortcoming: two processes making the same missing file at the same
moment each write one, and the last rename wins; a broker already running
with the loser's CA then refuses the other's devices until restarted.  Only
a first start of two local clouds on one fresh directory can do that.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path
from typing import Final

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertFiles", "InvalidClientId", "LocalPki"]

#: Lifetime of the local CA.
CA_LIFETIME: Final = datetime.timedelta(days=3650)
#: Lifetime of the server and device certificates.
LEAF_LIFETIME: Final = datetime.timedelta(days=825)
#: A certificate expiring sooner than this is made anew.
RENEW_BEFORE: Final = datetime.timedelta(days=30)
#: Backdating of notBefore, for clocks that disagree a little.
CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
#: The names every server certificate holds.
SERVER_NAMES: Final = ("localhost", "127.0.0.1", "::1")
#: Client ids that can be file names (and certificate common names).
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
#: Permissions of private key files.
_KEY_MODE: Final = 0o600
#: The common name of the local CA.
_CA_NAME: Final = "tracker local cloud CA"


class InvalidClientId(ValueError):
    """A client id that cannot name a certificate file."""


@attrs.frozen
class CertFiles:
    """A certificate (PEM) and its private key (PEM, mode 0600)."""

    cert_file: Path
    key_file: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (0600 when ``private``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    mode = _KEY_MODE if private else 0o644
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        # os.open's mode is masked by the umask; a key must be 0600 whatever
        # the umask says.
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _load(files: CertFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read a certificate and its key.

    Raises:
        ValueError: unreadable, not PEM, or the key does not match.
    """
    try:
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        key = serialization.load_pem_private_key(
            files.key_file.read_bytes(), password=None
        )
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the key is not an EC key")
    if key.public_key() != cert.public_key():
        raise ValueError("the key does not match the certificate")
    return cert, key


@attrs.define(eq=False)
class LocalPki:
    """The CA and certificates of one local cloud, kept in ``directory``.

    Every method may write files; ``OSError`` means the directory is not
    usable.
    """

    directory: Path
    _ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = attrs.field(
        default=None, init=False
    )

    @property
    def ca_file(self) -> Path:
        """The CA certificate: what clients and the broker trust."""
        return self.directory / "ca.pem"

    @property
    def device_directory(self) -> Path:
        """Where device certificates are kept (``<client id>.pem``/``.key``)."""
        return self.directory / "devices"

    def ensure_ca(self) -> Path:
        """Make the CA unless a valid one exists; return ``ca_file``."""
        self._authority()
        return self.ca_file

    def server_files(self, *extra_names: str) -> CertFiles:
        """The server certificate for ``SERVER_NAMES`` and ``extra_names``.

        Wildcard addresses (``0.0.0.0``, ``::``) are not names and are
        left out.
        """
        names = list(SERVER_NAMES)
        for name in extra_names:
            if name and name not in names and name not in ("0.0.0.0", "::"):
                names.append(name)
        files = CertFiles(self.directory / "server.pem", self.directory / "server.key")
        if not self._valid(files, names=names):
            self._issue(files, "localhost", names, server=True)
        return files

    def device_files(self, client_id: str) -> CertFiles:
        """The certificate of ``client_id`` (its common name), made if needed.

        Raises:
            InvalidClientId: ``client_id`` has characters other than
                letters, digits and ``. _ : @ -``, does not start with a
                letter or digit, or is longer than 128 characters.
        """
        if not _CLIENT_ID.fullmatch(client_id):
            raise InvalidClientId(
                f"client id {client_id!r}: the local cloud issues certificates "
                "only for ids of letters, digits and . _ : @ - (starting with "
                "a letter or digit, at most 128 characters)"
            )
        files = CertFiles(
            self.device_directory / f"{client_id}.pem",
            self.device_directory / f"{client_id}.key",
        )
        if not self._valid(files, common_name=client_id):
            self._issue(files, client_id, [], server=False)
        return files

    # -- internals -----------------------------------------------------------

    def _authority(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if self._ca is not None:
            return self._ca
        files = CertFiles(self.ca_file, self.directory / "ca.key")
        try:
            cert, key = _load(files)
            fresh = cert.not_valid_after_utc - RENEW_BEFORE > _now()
            constraints = cert.extensions.get_extension_for_class(
                x509.BasicConstraints
            ).value
            if fresh and constraints.ca:
                self._ca = (cert, key)
                return self._ca
        except (ValueError, x509.ExtensionNotFound):
            pass
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAME)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
            )
            .sign(key, hashes.SHA256())
        )
        _write(files.key_file, _key_pem(key), private=True)
        _write(files.cert_file, cert.public_bytes(serialization.Encoding.PEM))
        self._ca = (cert, key)
        return self._ca

    def _valid(
        self,
        files: CertFiles,
        *,
        names: list[str] | None = None,
        common_name: str | None = None,
    ) -> bool:
        ca_cert, _ca_key = self._authority()
        try:
            cert, _key = _load(files)
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        if cert.not_valid_after_utc - RENEW_BEFORE <= _now():
            return False
        if common_name is not None:
            held = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if [attribute.value for attribute in held] != [common_name]:
                return False
        if names is not None:
            try:
                san = cert.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName
                ).value
            except x509.ExtensionNotFound:
                return False
            if not all(_general_name(name) in san for name in names):
                return False
        return True

    def _issue(
        self, files: CertFiles, common_name: str, names: list[str], *, server: bool
    ) -> None:
        ca_cert, ca_key = self._authority()
        key = _new_key()
        now = _now()
        usage = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if server
            else (ExtendedKeyUsageOID.CLIENT_AUTH)
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.ExtendedKeyUsage([usage]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                False,
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(files.key_file, _key_pem(key), private=True)
        _write(files.cert_file, cert.public_bytes(serialization.Encoding.PEM))
