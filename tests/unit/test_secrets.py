from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest

from app.domain import secrets

KEY = "test-secret-key"


def test_signing_secret_is_whsec_and_24_random_bytes() -> None:
    secret = secrets.generate_signing_secret()
    assert secret.startswith("whsec_")
    assert len(secrets.decode_signing_secret(secret)) == 24
    assert secret != secrets.generate_signing_secret()


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ),
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
        ("whsec_" + base64.b64encode(b"x" * 64).decode(), b"x" * 64),
    ],
)
def test_decode_signing_secret(secret: str, expected: bytes) -> None:
    assert secrets.decode_signing_secret(secret) == expected


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_not base64!", "not valid base64"),
        ("whsec_abc", "not valid base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "24 to 64 bytes, not 23"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64 bytes, not 65"),
        ("whsec_", "24 to 64 bytes, not 0"),
    ],
)
def test_decode_signing_secret_refuses(secret: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        secrets.decode_signing_secret(secret)


def test_ed25519_keypair_formats_and_public_key_derivation() -> None:
    secret_key, public_key = secrets.generate_ed25519_keypair()
    assert secret_key.startswith("whsk_") and public_key.startswith("whpk_")
    raw = base64.b64decode(secret_key.removeprefix("whsk_"))
    assert len(raw) == 64
    assert raw[32:] == base64.b64decode(public_key.removeprefix("whpk_"))
    assert secrets.ed25519_public_key(secret_key) == public_key


def test_a_bare_32_byte_seed_is_accepted() -> None:
    secret_key, public_key = secrets.generate_ed25519_keypair()
    seed = base64.b64decode(secret_key.removeprefix("whsk_"))[:32]
    assert secrets.ed25519_public_key("whsk_" + base64.b64encode(seed).decode()) == public_key


@pytest.mark.parametrize(
    ("secret_key", "message"),
    [
        ("whsec_" + base64.b64encode(b"x" * 32).decode(), "starts with 'whsk_'"),
        ("whsk_***", "not valid base64"),
        ("whsk_" + base64.b64encode(b"x" * 31).decode(), "32 or 64 bytes, not 31"),
        ("whsk_" + base64.b64encode(b"x" * 64).decode(), "does not match its seed"),
    ],
)
def test_bad_ed25519_secret_keys_are_refused(secret_key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        secrets.ed25519_public_key(secret_key)


@pytest.mark.parametrize(
    ("public_key", "message"),
    [
        ("whsk_" + base64.b64encode(b"x" * 32).decode(), "starts with 'whpk_'"),
        ("whpk_" + base64.b64encode(b"x" * 64).decode(), "32 bytes, not 64"),
    ],
)
def test_bad_ed25519_public_keys_are_refused(public_key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        secrets.decode_ed25519_public_key(public_key)


def test_secret_box_round_trip_with_fresh_nonces() -> None:
    box = secrets.SecretBox(KEY)
    first, second = box.encrypt("whsec_abc"), box.encrypt("whsec_abc")
    assert first != second
    assert "whsec_abc" not in first
    assert box.decrypt(first) == box.decrypt(second) == "whsec_abc"
    assert secrets.SecretBox(KEY).decrypt(first) == "whsec_abc"


def flip_last_byte(token: str) -> str:
    version, body = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[-1] ^= 1
    return f"{version}.{base64.urlsafe_b64encode(bytes(raw)).decode()}"


@pytest.mark.parametrize(
    ("alter", "message"),
    [
        (flip_last_byte, "corrupt or was encrypted under another"),
        (lambda token: token[:20], "corrupt or was encrypted under another"),
        (lambda token: token.replace("v1.", "v2.", 1), "known version"),
        (lambda token: "v1.@@@", "corrupt or was encrypted under another"),
        (lambda token: "", "known version"),
    ],
)
def test_secret_box_refuses_altered_tokens(alter: Callable[[str], str], message: str) -> None:
    box = secrets.SecretBox(KEY)
    with pytest.raises(secrets.SecretDecryptionError, match=message):
        box.decrypt(alter(box.encrypt("whsec_abc")))


@pytest.mark.parametrize("alter", [flip_last_byte, lambda token: token[:20]])
def test_secret_box_refuses_an_altered_token_after_decrypting_the_genuine_one(
    alter: Callable[[str], str],
) -> None:
    box = secrets.SecretBox(KEY)
    token = box.encrypt("whsec_abc")
    assert box.decrypt(token) == "whsec_abc"
    assert box.decrypt(token) == "whsec_abc"  # remembered
    with pytest.raises(secrets.SecretDecryptionError):
        box.decrypt(alter(token))


def test_secret_box_remembers_a_bounded_number_of_decrypted_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(secrets.SecretBox, "DECRYPTED_KEPT", 3)
    box = secrets.SecretBox(KEY)
    tokens = {box.encrypt(f"whsec_{n}"): f"whsec_{n}" for n in range(10)}
    for token, plaintext in tokens.items():
        assert box.decrypt(token) == plaintext
        assert len(box._decrypted) <= 3
    for token, plaintext in tokens.items():  # forgotten ones are decrypted again
        assert box.decrypt(token) == plaintext


def test_secret_box_refuses_a_token_made_under_another_key() -> None:
    token = secrets.SecretBox("another-key").encrypt("whsec_abc")
    with pytest.raises(secrets.SecretDecryptionError):
        secrets.SecretBox(KEY).decrypt(token)


def test_secret_box_needs_a_key() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        secrets.SecretBox("")


def test_api_keys_are_prefixed_random_and_hashed_with_sha256() -> None:
    key = secrets.generate_api_key()
    assert key.startswith("tdk_") and len(key) == 4 + 43
    assert key != secrets.generate_api_key()
    assert secrets.generate_api_key(prefix="tdk_admin_").startswith("tdk_admin_")
    assert secrets.hash_api_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert secrets.hash_api_key("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [("abc", "abc", True), ("abc", "abd", False), ("abc", "abcd", False), ("", "", True)],
)
def test_keys_equal(a: str, b: str, equal: bool) -> None:
    assert secrets.keys_equal(a, b) is equal
