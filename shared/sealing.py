"""Webhook signing secrets sealed at rest.

A subscription's signing secret lets whoever holds it forge webhooks to the receiver, so it
is stored sealed: AES-256-GCM under a key only the gateway (which stores subscriptions) and
the notifier (which signs with them) are given, with the subscription id as associated data
(a sealed secret copied onto another subscription does not open). Whoever reads the
webhooks bucket, or a backup of the JetStream store, sees only::

    sealed:v1:{kid}:{base64url(nonce ‖ ciphertext ‖ tag)}

``TETHER_WEBHOOK_SEALING_KEYS`` (or ``_FILE``) holds one or more comma-separated keys, each
32 random bytes in base64 (``openssl rand -base64 32``). The first seals; every one opens
(``kid``, the first 8 hex digits of the key's SHA-256, says which): to rotate, put the new
key first and keep the old one while subscriptions sealed with it exist. Without keys,
secrets are stored as given (``tether up`` generates a key in its data dir).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import ConfigError
from shared.settings import Env

PREFIX = "sealed:v1:"
VARIABLE = "TETHER_WEBHOOK_SEALING_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12


class SealedSecretError(Exception):
    """A sealed secret that none of the configured keys opens."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


class Sealer:
    """Seals with the first key, opens with any; the keys never show in a repr."""

    __slots__ = ("_keys", "_sealing")

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a Sealer needs at least one key")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self._sealing = key_id(keys[0])

    @classmethod
    def parse(cls, raw: str, name: str = VARIABLE) -> Sealer | None:
        """Keys from ``raw`` (comma-separated base64); None when empty; ConfigError (naming
        ``name`` and the key's position, never its value) for a malformed one."""
        keys = []
        for position, item in enumerate((p.strip() for p in raw.split(",")), 1):
            if not item:
                continue
            try:
                key = base64.b64decode(item + "=" * (-len(item) % 4), altchars=b"-_", validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{name}: key {position} is not base64") from None
            if len(key) != KEY_BYTES:
                raise ConfigError(
                    f"{name}: key {position} decodes to {len(key)} bytes, not {KEY_BYTES} "
                    "(openssl rand -base64 32)"
                )
            keys.append(key)
        return cls(keys) if keys else None

    @classmethod
    def from_env(cls, env: Env | None = None) -> Sealer | None:
        return cls.parse((env or Env()).secret(VARIABLE).reveal())

    def seal(self, secret: str, context: str) -> str:
        """``secret`` sealed for the record named ``context`` (the subscription id)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._sealing].encrypt(nonce, secret.encode(), context.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{PREFIX}{self._sealing}:{body}"

    def open(self, value: str, context: str) -> str:
        """The secret inside ``value`` (SealedSecretError: unknown key, damaged, or sealed
        for another record)."""
        kid, _, body = value.removeprefix(PREFIX).partition(":")
        aead = self._keys.get(kid)
        if aead is None:
            raise SealedSecretError(f"sealed with key {kid!r}, which is not in {VARIABLE}")
        try:
            data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], context.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise SealedSecretError("the sealed secret is damaged or not this record's") from None
        return plain.decode()

    def __repr__(self) -> str:
        return f"Sealer(keys={sorted(self._keys)}, sealing={self._sealing!r})"
