from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
import standardwebhooks
import svix.webhooks
from cryptography.exceptions import InvalidSignature

from app.domain import secrets, signing
from app.domain.models import SignatureScheme

# The Standard Webhooks reference libraries' published test vector. The example in
# webhook-platforms.md 3.1 (`v1,K5oZfz...`) elides its body and secret, so it cannot be
# recomputed; this one can.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"test": 2432232314}'
# Computed once with openssl, e.g.
#   printf '%s' '{"test": 2432232314}' | openssl dgst -sha256 -hmac 'medplum-secret' -hex
MEDPLUM_HEX = "e159128c65ad83d947d9745f6888661af2c86fd3910b054c6ce147db2a791809"
#   printf '%s' '1700000000.{"test": 2432232314}' | openssl dgst -sha256 -hmac KEY -hex
STRIPE_STYLE_HEX = "30933567e79bcffaa6cd6e881490dd611aa86d97edbd6b6f946127f3b22aa6bd"
OLDER_SECRET_HEX = "f34ab2e018e385b9cf2ff2d663930bd98b6a957fddbf51a5ecaa41237b561417"


def sign_now(scheme: SignatureScheme, keys: list[str], body: bytes = BODY) -> dict[str, str]:
    return signing.sign(
        scheme, secrets=keys, message_id="evt_1", timestamp=int(time.time()), body=body
    )


def test_standard_webhooks_matches_the_reference_vector() -> None:
    headers = signing.sign(
        SignatureScheme.STANDARD_WEBHOOKS,
        secrets=[SPEC_SECRET],
        message_id=SPEC_ID,
        timestamp=SPEC_TIMESTAMP,
        body=SPEC_BODY,
    )
    assert headers == {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE,
    }


@pytest.mark.parametrize("verifier", [standardwebhooks.Webhook, svix.webhooks.Webhook])
def test_standard_webhooks_verifies_with_independent_libraries(verifier: type) -> None:
    secret = secrets.generate_signing_secret()
    headers = sign_now(SignatureScheme.STANDARD_WEBHOOKS, [secret])
    verifier(secret).verify(BODY, headers)


@pytest.mark.parametrize("verifier", [standardwebhooks.Webhook, svix.webhooks.Webhook])
def test_during_rotation_each_live_secret_verifies(verifier: type) -> None:
    new, old = secrets.generate_signing_secret(), secrets.generate_signing_secret()
    headers = sign_now(SignatureScheme.STANDARD_WEBHOOKS, [new, old])
    assert len(headers["webhook-signature"].split(" ")) == 2
    verifier(new).verify(BODY, headers)
    verifier(old).verify(BODY, headers)


@pytest.mark.parametrize("verifier", [standardwebhooks.Webhook, svix.webhooks.Webhook])
def test_a_retired_secret_or_altered_body_does_not_verify(verifier: type) -> None:
    headers = sign_now(SignatureScheme.STANDARD_WEBHOOKS, [secrets.generate_signing_secret()])
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verifier(secrets.generate_signing_secret()).verify(BODY, headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verifier(SPEC_SECRET).verify(BODY + b" ", headers)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["medplum-secret"], MEDPLUM_HEX),
        (["medplum-secret", "older-secret"], MEDPLUM_HEX),  # the newest alone signs
    ],
)
def test_medplum_signs_the_body_with_the_secret_string(keys: list[str], expected: str) -> None:
    headers = signing.sign(
        SignatureScheme.MEDPLUM, secrets=keys, message_id="evt_1", timestamp=1, body=BODY
    )
    assert headers == {"X-Signature": expected}
    assert expected == hmac.new(b"medplum-secret", BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("keys", "header_name", "expected"),
    [
        (
            ["whsec_stripe-style-secret"],
            None,
            {"Tidings-Signature": f"t=1700000000,v1={STRIPE_STYLE_HEX}"},
        ),
        (
            ["whsec_stripe-style-secret", "older-secret"],
            "Medblocks-Signature",
            {"Medblocks-Signature": (f"t=1700000000,v1={STRIPE_STYLE_HEX},v1={OLDER_SECRET_HEX}")},
        ),
    ],
)
def test_timestamped_hmac_signs_timestamp_dot_body(
    keys: list[str], header_name: str | None, expected: dict[str, str]
) -> None:
    headers = signing.sign(
        SignatureScheme.TIMESTAMPED_HMAC,
        secrets=keys,
        message_id="evt_1",
        timestamp=1700000000,
        body=BODY,
        header_name=header_name,
    )
    assert headers == expected


def test_timestamped_hmac_vector_is_what_hmac_computes() -> None:
    content = b"1700000000." + BODY
    digest = hmac.new(b"whsec_stripe-style-secret", content, hashlib.sha256).hexdigest()
    assert digest == STRIPE_STYLE_HEX


def test_ed25519_signatures_verify_with_each_public_key() -> None:
    first, second = secrets.generate_ed25519_keypair(), secrets.generate_ed25519_keypair()
    headers = signing.sign(
        SignatureScheme.ED25519,
        secrets=[first[0], second[0]],
        message_id="evt_1",
        timestamp=1700000000,
        body=BODY,
    )
    entries = headers["webhook-signature"].split(" ")
    assert [entry.split(",")[0] for entry in entries] == ["v1a", "v1a"]
    content = b"evt_1.1700000000." + BODY
    for (_, public), entry in zip([first, second], entries, strict=True):
        key = secrets.decode_ed25519_public_key(public)
        key.verify(base64.b64decode(entry.split(",")[1]), content)
    assert headers["webhook-id"] == "evt_1"
    assert headers["webhook-timestamp"] == "1700000000"


def test_ed25519_signature_fails_for_another_body() -> None:
    secret_key, public_key = secrets.generate_ed25519_keypair()
    headers = sign_now(SignatureScheme.ED25519, [secret_key])
    signature = base64.b64decode(headers["webhook-signature"].split(",")[1])
    content = f"evt_1.{headers['webhook-timestamp']}.".encode() + b"{}"
    with pytest.raises(InvalidSignature):
        secrets.decode_ed25519_public_key(public_key).verify(signature, content)


@pytest.mark.parametrize(
    ("scheme", "keys", "message_id", "message"),
    [
        (SignatureScheme.STANDARD_WEBHOOKS, [], "evt_1", "at least one secret"),
        (SignatureScheme.STANDARD_WEBHOOKS, ["whsec_c2hvcnQ="], "evt_1", "24 to 64 bytes"),
        (SignatureScheme.STANDARD_WEBHOOKS, [SPEC_SECRET], "evt.1", "without '.'"),
        (SignatureScheme.STANDARD_WEBHOOKS, [SPEC_SECRET], "evt 1", "without '.'"),
        (SignatureScheme.ED25519, [SPEC_SECRET], "evt_1", "starts with 'whsk_'"),
    ],
)
def test_unusable_inputs_are_refused(
    scheme: SignatureScheme, keys: list[str], message_id: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        signing.sign(scheme, secrets=keys, message_id=message_id, timestamp=1, body=BODY)
