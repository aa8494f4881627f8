"""Secret values: signing secrets, Ed25519 keys, API keys, and encryption at rest.

Formats follow Standard Webhooks: a symmetric signing secret is `whsec_` + base64 of
24 random bytes; an Ed25519 key pair is `whsk_` + base64 of the 64-byte secret key
(seed then public key, as Svix and Go's `crypto/ed25519` store it) and `whpk_` + base64
of the 32-byte public key.

Signing secrets are stored encrypted by a `SecretBox` whose key is derived from
`TIDINGS_SECRET_KEY`; API keys are stored as SHA-256 hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SIGNING_SECRET_PREFIX = "whsec_"
SIGNING_SECRET_BYTES = 24
SIGNING_SECRET_RANGE = range(24, 65)  # what the Standard Webhooks spec allows
ED25519_SECRET_PREFIX = "whsk_"
ED25519_PUBLIC_PREFIX = "whpk_"
API_KEY_PREFIX = "tdk_"

_SEED_BYTES = 32
_TOKEN_VERSION = "v1"
_NONCE_BYTES = 12
_HKDF_SALT = b"tidings secret box"
_HKDF_INFO = b"tidings/signing-secrets/aes-256-gcm/v1"


class SecretDecryptionError(ValueError):
    """An encrypted secret is corrupt, was tampered with, or was encrypted under another key."""


def generate_signing_secret() -> str:
    """A new Standard Webhooks signing secret: `whsec_` + base64 of 24 random bytes."""
    return SIGNING_SECRET_PREFIX + _b64(secrets.token_bytes(SIGNING_SECRET_BYTES))


def decode_signing_secret(secret: str) -> bytes:
    """The HMAC key bytes of a `whsec_` secret (the prefix is optional).

    Raises:
        ValueError: when the text is not base64 or decodes to fewer than 24 or more
            than 64 bytes.
    """
    raw = _decode_b64(secret.removeprefix(SIGNING_SECRET_PREFIX), "signing secret")
    if len(raw) not in SIGNING_SECRET_RANGE:
        raise ValueError(f"signing secret must decode to 24 to 64 bytes, not {len(raw)}")
    return raw


def generate_ed25519_keypair() -> tuple[str, str]:
    """A new Ed25519 key pair as (`whsk_...` secret key, `whpk_...` public key)."""
    seed = secrets.token_bytes(_SEED_BYTES)
    public = _public_bytes(Ed25519PrivateKey.from_private_bytes(seed))
    return ED25519_SECRET_PREFIX + _b64(seed + public), ED25519_PUBLIC_PREFIX + _b64(public)


def ed25519_public_key(secret_key: str) -> str:
    """The `whpk_...` public key that belongs to a `whsk_...` secret key.

    Raises:
        ValueError: as `decode_ed25519_secret_key` does.
    """
    return ED25519_PUBLIC_PREFIX + _b64(_public_bytes(decode_ed25519_secret_key(secret_key)))


def decode_ed25519_secret_key(secret_key: str) -> Ed25519PrivateKey:
    """The private key behind a `whsk_` secret key (64 bytes, or a bare 32-byte seed).

    Raises:
        ValueError: when the prefix is missing, the text is not base64, the length is
            wrong, or a 64-byte key's public half does not match its seed.
    """
    if not secret_key.startswith(ED25519_SECRET_PREFIX):
        raise ValueError(f"an Ed25519 secret key starts with {ED25519_SECRET_PREFIX!r}")
    raw = _decode_b64(secret_key.removeprefix(ED25519_SECRET_PREFIX), "Ed25519 secret key")
    if len(raw) not in (_SEED_BYTES, 2 * _SEED_BYTES):
        raise ValueError(f"an Ed25519 secret key is 32 or 64 bytes, not {len(raw)}")
    key = Ed25519PrivateKey.from_private_bytes(raw[:_SEED_BYTES])
    if len(raw) == 2 * _SEED_BYTES and raw[_SEED_BYTES:] != _public_bytes(key):
        raise ValueError("the Ed25519 secret key's public half does not match its seed")
    return key


def decode_ed25519_public_key(public_key: str) -> Ed25519PublicKey:
    """The public key behind a `whpk_` string.

    Raises:
        ValueError: when the prefix is missing, the text is not base64 or not 32 bytes.
    """
    if not public_key.startswith(ED25519_PUBLIC_PREFIX):
        raise ValueError(f"an Ed25519 public key starts with {ED25519_PUBLIC_PREFIX!r}")
    raw = _decode_b64(public_key.removeprefix(ED25519_PUBLIC_PREFIX), "Ed25519 public key")
    if len(raw) != _SEED_BYTES:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def generate_api_key(prefix: str = API_KEY_PREFIX) -> str:
    """A new API key: `prefix` + 43 URL-safe characters (256 random bits)."""
    return prefix + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest under which an API key is stored and looked up."""
    # A slow KDF (bcrypt, scrypt) defends guessable passwords. API keys carry 256 random
    # bits, so a brute-force search is hopeless even at GPU speed; a fast, unsalted hash
    # also lets the key be found by an indexed equality lookup.
    return hashlib.sha256(key.encode()).hexdigest()


def keys_equal(a: str, b: str) -> bool:
    """Compare two secrets or digests in time independent of where they differ."""
    return hmac.compare_digest(a.encode(), b.encode())


class SecretBox:
    """Encrypts secrets at rest with AES-256-GCM under a key derived from `TIDINGS_SECRET_KEY`.

    The AES key is HKDF-SHA256 of the setting, so any string works as the setting and
    the derived key is used for nothing else. Tokens read `v1.<base64url(nonce|ciphertext)>`;
    the version leaves room to change the scheme or rotate the key later.

    Decrypted tokens are remembered (at most `DECRYPTED_KEPT`): the worker decrypts the same
    endpoint secrets for every attempt, and the process holds the key to them anyway.
    """

    DECRYPTED_KEPT = 4096

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("the secret key must not be empty")
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO
        ).derive(key.encode())
        self._aead = AESGCM(derived)
        self._decrypted: dict[str, str] = {}

    def encrypt(self, plaintext: str) -> str:
        """Encrypt `plaintext`; each call uses a fresh nonce, so tokens differ."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), None)
        return f"{_TOKEN_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str) -> str:
        """Decrypt a token made by `encrypt` under the same key.

        Raises:
            SecretDecryptionError: when the token is malformed, altered, or was made
                under another key.
        """
        found = self._decrypted.get(token)
        if found is not None:
            return found
        if len(self._decrypted) >= self.DECRYPTED_KEPT:
            self._decrypted.clear()
        found = self._decrypted[token] = self._open(token)
        return found

    def _open(self, token: str) -> str:
        version, _, body = token.partition(".")
        if version != _TOKEN_VERSION:
            raise SecretDecryptionError("not an encrypted secret of a known version")
        try:
            sealed = base64.urlsafe_b64decode(body.encode())
            plaintext = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None)
        except (binascii.Error, ValueError, InvalidTag):
            raise SecretDecryptionError(
                "encrypted secret is corrupt or was encrypted under another TIDINGS_SECRET_KEY"
            ) from None
        return plaintext.decode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _decode_b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError(f"{what} is not valid base64") from None


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
