"""Signature headers for one delivery attempt (SPEC section 8).

`sign` returns the headers a scheme adds to the request; it is pure, with the
timestamp passed in. `secrets` are the endpoint's live secrets, newest first: during a
rotation every live secret signs, except for `medplum`, whose single `X-Signature`
carries the newest.

- standard-webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64> ...`;
  the key is the base64-decoded `whsec_` secret.
- medplum: `X-Signature: <hex HMAC-SHA256 of the body>`; the key is the secret string as
  UTF-8, as Medplum does.
- timestamped-hmac: `<header>: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">,...`; the key is
  the secret string as UTF-8, as Stripe does.
- ed25519: the Standard Webhooks headers with `v1a,<b64 Ed25519 signature>`; the key is a
  `whsk_` secret key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence

from app.domain import secrets as secrets_module
from app.domain.models import SignatureScheme

DEFAULT_TIMESTAMPED_HEADER = "Tidings-Signature"
MEDPLUM_HEADER = "X-Signature"
_AMBIGUOUS_IN_ID = re.compile(r"[.\s]")  # a '.' or whitespace: see `signed_content`


def sign(
    scheme: SignatureScheme,
    *,
    secrets: Sequence[str],
    message_id: str,
    timestamp: int,
    body: bytes,
    header_name: str | None = None,
) -> dict[str, str]:
    """The signature headers for `body` under `scheme`.

    Arguments:
        secrets: the endpoint's live secrets, newest first.
        message_id: the event id, stable across retries (`webhook-id`).
        timestamp: the attempt time in Unix seconds.
        header_name: the header for `timestamped-hmac` (default `Tidings-Signature`);
            other schemes have fixed header names and ignore it.

    Raises:
        ValueError: when there is no secret, a secret does not suit the scheme, or the
            message id contains a `.` or whitespace (it is part of the signed content).
    """
    if not secrets:
        raise ValueError("signing needs at least one secret")
    match SignatureScheme(scheme):
        case SignatureScheme.STANDARD_WEBHOOKS:
            return standard_webhooks_headers(secrets, message_id, timestamp, body)
        case SignatureScheme.ED25519:
            return ed25519_headers(secrets, message_id, timestamp, body)
        case SignatureScheme.MEDPLUM:
            return {MEDPLUM_HEADER: _hex_hmac(secrets[0], body)}
        case SignatureScheme.TIMESTAMPED_HMAC:
            header = header_name or DEFAULT_TIMESTAMPED_HEADER
            return {header: timestamped_signature(secrets, timestamp, body)}


def standard_webhooks_headers(
    secrets: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Standard Webhooks v1 headers: one `v1,<base64 HMAC-SHA256>` per `whsec_` secret."""
    content = signed_content(message_id, timestamp, body)
    signatures = (
        hmac.new(secrets_module.decode_signing_secret(secret), content, hashlib.sha256).digest()
        for secret in secrets
    )
    return _webhook_headers(message_id, timestamp, (f"v1,{_b64(sig)}" for sig in signatures))


def ed25519_headers(
    secret_keys: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Standard Webhooks v1a headers: one `v1a,<base64 Ed25519 signature>` per `whsk_` key."""
    content = signed_content(message_id, timestamp, body)
    keys = (secrets_module.decode_ed25519_secret_key(key) for key in secret_keys)
    return _webhook_headers(message_id, timestamp, (f"v1a,{_b64(k.sign(content))}" for k in keys))


def timestamped_signature(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """`t=<unix>,v1=<hex>,...`: one HMAC-SHA256 of `"<t>.<body>"` per secret, Stripe style."""
    content = str(timestamp).encode() + b"." + body
    return ",".join([f"t={timestamp}", *(f"v1={_hex_hmac(s, content)}" for s in secrets)])


def signed_content(message_id: str, timestamp: int, body: bytes) -> bytes:
    """The bytes Standard Webhooks signs: `"<id>.<timestamp>.<body>"`.

    Raises:
        ValueError: when the message id contains a `.` or whitespace, which would make
            the content ambiguous or break the header.
    """
    if not message_id or _AMBIGUOUS_IN_ID.search(message_id):
        raise ValueError(f"message id {message_id!r} must be non-empty, without '.' or spaces")
    return f"{message_id}.{timestamp}.".encode() + body


def _webhook_headers(message_id: str, timestamp: int, signatures: Iterable[str]) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }


def _hex_hmac(secret: str, content: bytes) -> str:
    return hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
