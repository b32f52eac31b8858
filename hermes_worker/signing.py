"""Signed task messages: Celery's ``auth`` serializer, for deployments where the broker is shared.

Without signing, anyone who can write to the broker can send Hermes' task and remote-control
commands (SECURITY.md, "Broker writers"). With ``HERMES_SIGNING_KEY``, ``HERMES_SIGNING_CERT`` and
``HERMES_SIGNING_CERTS`` set on every producer, worker and Flower, each task message and each
remote-control message is signed with the sender's RSA key, and workers (and Flower) accept only
messages signed by a certificate in ``HERMES_SIGNING_CERTS``: an unsigned or wrongly signed one is
refused and never runs. Events (what Flower shows) stay unsigned JSON.

Celery's serializer decodes the signed body with whatever serializer the signer named, pickle
included; Hermes' subclass accepts JSON only, so a signed message can never unpickle anything.
Needs the ``cryptography`` package: ``pip install '.[signing]'`` in the Hermes checkout, or
``pip install cryptography``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import EXIT_USAGE, HermesError

__all__ = ["SigningError", "check_files", "enable"]

_JSON = "application/json"


class SigningError(HermesError):
    """The signing files cannot be used; the message says which and why (never their contents).

    A usage error (exit 2): the files are named by ``HERMES_SIGNING_*``, and ``Settings.from_env``
    turns it into a ``SettingsError`` (not its subclass: :mod:`.settings` imports this module).
    """

    exit_code = EXIT_USAGE


def _imports() -> Any:
    try:
        from celery.security import certificate, key, serialization
    except Exception as exc:  # celery.security raises ImproperlyConfigured without cryptography
        raise SigningError(
            "message signing needs the cryptography package: pip install '.[signing]' in the Hermes checkout, "
            "or pip install cryptography"
        ) from exc
    return certificate, key, serialization


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningError(f"cannot read the {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def check_files(key: Path, cert: Path, certs: Path) -> None:
    """Load the private key, its certificate and the trusted certificates once, to fail early.

    Raises:
        SigningError: naming the file and the problem.
    """
    certificate, private_key, _ = _imports()
    from celery.exceptions import SecurityError

    key_text, cert_text = _read(key, "signing key"), _read(cert, "signing certificate")
    try:
        private_key.PrivateKey(key_text)
    except Exception:  # the library's own message may quote the file: never show it
        raise SigningError(f"{key} is not an unencrypted RSA private key in PEM form") from None
    try:
        own = certificate.Certificate(cert_text)
    except Exception:
        raise SigningError(f"{cert} is not an RSA certificate in PEM form") from None
    if own.has_expired():
        raise SigningError(f"the signing certificate {cert} has expired")
    if not (certs.is_dir() or certs.is_file()):
        raise SigningError(f"{certs} is neither a directory of certificates nor a certificate file")
    try:
        store = certificate.FSCertStore(str(certs))
    except (SecurityError, OSError, ValueError) as exc:
        raise SigningError(f"the trusted certificates in {certs} cannot be used: {exc}") from None
    if not list(store.itercerts()):
        raise SigningError(f"{certs} holds no certificate: nothing could ever be verified")


def enable(app: Any, key: Path, cert: Path, certs: Path) -> None:
    """Sign every task and remote-control message ``app`` sends; accept only signed ones.

    Registers the ``auth`` serializer (JSON inside, nothing else) and configures ``app`` to use
    it; the files were checked by :func:`check_files` when the settings were read.
    """
    certificate, private_key, _ = _imports()
    from celery.exceptions import SecurityError
    from celery.security.serialization import SecureSerializer, reraise_errors
    from kombu.serialization import loads, registry

    class JsonSecureSerializer(SecureSerializer):  # type: ignore[misc]
        """Celery's signed serializer, refusing any signed body that is not JSON."""

        def deserialize(self, data: Any) -> Any:
            with reraise_errors("Unable to deserialize: {0!r}", (Exception,)):
                payload = self._unpack(data)
                self._cert_store[payload["signer"]].verify(payload["body"], payload["signature"], self._digest)
                if payload["content_type"] != _JSON:
                    raise SecurityError(f"signed content of type {payload['content_type']!r}: only JSON is accepted")
            return loads(payload["body"], _JSON, payload["content_encoding"], accept=[_JSON])  # type: ignore[no-untyped-call]

    signer: Any = JsonSecureSerializer(
        private_key.PrivateKey(_read(key, "signing key")),
        certificate.Certificate(_read(cert, "signing certificate")),
        certificate.FSCertStore(str(certs)),
        "sha256",
        serializer="json",
    )
    registry.register(  # type: ignore[no-untyped-call]
        "auth", signer.serialize, signer.deserialize, content_type="application/data", content_encoding="utf-8"
    )
    # Task and remote-control messages (Celery's mailbox uses the task serializer and the accept
    # list too) are signed; results travel on Hermes' own streams, events stay JSON for Flower.
    app.conf.update(task_serializer="auth", accept_content=["auth"], security_digest="sha256")
