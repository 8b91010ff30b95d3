"""Token keys: the keys a gateway verifies with (by ``kid``, each with one pinned
algorithm), read from ``TETHER_JWT_KEYS`` JSON, and the keys app servers sign with.

HMAC keys (HS256/384/512) hold a secret; RS256, ES256 and EdDSA keys on the verifying side
hold only a public key, so an app server can mint tokens without sharing a secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from shared.errors import ConfigError, Unauthorized
from shared.settings import Secret

ALGORITHM = "HS256"  # the algorithm of the legacy single secret (kid "default")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "ES256", "EdDSA")
ALGORITHMS = HMAC_ALGORITHMS + ASYMMETRIC_ALGORITHMS
DEFAULT_KID = "default"
MIN_HMAC_BYTES = 32  # RFC 7518 §3.2: a key at least as long as the hash
MIN_RSA_BITS = 2048
MAX_KID = 128

_KID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


# ---- keys -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """One key the gateway accepts: its ``kid``, its pinned algorithm and its material.

    HMAC keys hold a :class:`Secret`; RS256, ES256 and EdDSA keys hold only a public key.
    """

    kid: str
    alg: str
    secret: Secret = field(default_factory=lambda: Secret(""), repr=False)
    public_key: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def hmac(cls, kid: str, alg: str, secret: Secret) -> VerifyingKey:
        if alg not in HMAC_ALGORITHMS:
            raise ValueError(f"alg {alg!r} is not an HMAC algorithm")
        return cls(kid=kid, alg=alg, secret=secret)

    @classmethod
    def from_public_pem(cls, kid: str, alg: str, pem: str) -> VerifyingKey:
        """Load a PEM public key and check it fits ``alg``; raise ValueError saying why not."""
        if "PRIVATE KEY" in pem:
            raise ValueError("holds a private key; give the gateway only the public key")
        try:
            key = load_pem_public_key(pem.encode())
        except (ValueError, TypeError):
            raise ValueError("is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
        check_key_type(key, alg)
        return cls(kid=kid, alg=alg, public_key=key)

    def material(self) -> Any:
        return self.secret.reveal() if self.alg in HMAC_ALGORITHMS else self.public_key


def check_key_type(key: object, alg: str) -> None:
    """Raise ValueError unless ``key`` (public or private) is of the kind ``alg`` uses."""
    if alg == "RS256":
        if not isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
            raise ValueError("is not an RSA key, which RS256 needs")
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"is an RSA key of {key.key_size} bits, below {MIN_RSA_BITS}")
    elif alg == "ES256":
        if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) or (
            not isinstance(key.curve, ec.SECP256R1)
        ):
            raise ValueError("is not a P-256 EC key, which ES256 needs")
    elif alg == "EdDSA":
        kinds = (
            ed25519.Ed25519PublicKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PublicKey,
            ed448.Ed448PrivateKey,
        )
        if not isinstance(key, kinds):
            raise ValueError("is not an Ed25519 (or Ed448) key, which EdDSA needs")
    else:
        raise ValueError(f"alg {alg!r} is not one of {', '.join(ASYMMETRIC_ALGORITHMS)}")


class KeyRing:
    """The keys a gateway verifies with, by ``kid``; a token without ``kid`` uses ``default``."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[VerifyingKey] = ()) -> None:
        self._keys: dict[str, VerifyingKey] = {}
        for key in keys:
            if key.kid in self._keys:
                raise ValueError(f"kid {key.kid!r} is configured twice")
            self._keys[key.kid] = key

    @classmethod
    def from_secret(cls, secret: Secret) -> KeyRing:
        """The legacy single secret as the ``default`` HS256 key (no key when empty)."""
        return cls([VerifyingKey.hmac(DEFAULT_KID, ALGORITHM, secret)] if secret else [])

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def keys(self) -> tuple[VerifyingKey, ...]:
        return tuple(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k.kid}:{k.alg}" for k in self._keys.values())
        return f"KeyRing({shown})"

    def find(self, kid: str | None) -> VerifyingKey:
        """The key for a token's ``kid`` header; Unauthorized when there is none."""
        if kid is None:
            key = self._keys.get(DEFAULT_KID)
            if key is None:
                raise Unauthorized(
                    "token has no 'kid' header and this gateway has no default key; "
                    "sign it with one of the gateway's keys and name its kid"
                )
            return key
        key = self._keys.get(kid)
        if key is None:
            raise Unauthorized(
                f"token key id {kid[:MAX_KID]!r} is not known here (retired or never configured)"
            )
        return key


def keys_from_json(text: str, source: str) -> tuple[VerifyingKey, ...]:
    """Parse a keys config: ``{kid: {"alg": ..., "secret"|"secret_file"|"public_key"|
    "public_key_file": ...}}``. ``source`` names the variable in ConfigError messages;
    no secret is ever part of a message."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ConfigError(f"{source} is not valid JSON ({where})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source} holds a JSON {type(data).__name__}, not an object of kids")
    return tuple(_key_from_entry(kid, entry, source) for kid, entry in data.items())


def _key_from_entry(kid: str, entry: object, source: str) -> VerifyingKey:
    if not _KID.fullmatch(kid):
        raise ConfigError(
            f"{source} has kid {kid[:MAX_KID]!r}, not 1 to {MAX_KID} of A-Z a-z 0-9 . _ : -"
        )
    if not isinstance(entry, dict):
        raise ConfigError(f"{source} key {kid!r} is a JSON {type(entry).__name__}, not an object")
    known = {"alg", "secret", "secret_file", "public_key", "public_key_file"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigError(
            f"{source} key {kid!r} has field {unknown[0]!r}, not one of {', '.join(sorted(known))}"
        )
    alg = entry.get("alg")
    if alg not in ALGORITHMS:
        shown = str(alg)[:32]
        raise ConfigError(
            f"{source} key {kid!r} has alg {shown!r}, not one of {', '.join(ALGORITHMS)}"
        )
    takes = "secret" if alg in HMAC_ALGORITHMS else "public_key"
    for name in sorted(entry):
        if name != "alg" and not name.startswith(takes):
            raise ConfigError(
                f"{source} key {kid!r} has field {name!r}, which alg {alg!r} does not take "
                f"(it takes {takes!r} or '{takes}_file')"
            )
    if alg in HMAC_ALGORITHMS:
        secret = _material(entry, kid, source, "secret")
        if len(secret.encode()) < MIN_HMAC_BYTES:
            raise ConfigError(
                f"{source} key {kid!r} has a secret of {len(secret.encode())} bytes, "
                f"below the minimum {MIN_HMAC_BYTES}"
            )
        return VerifyingKey.hmac(kid, alg, Secret(secret))
    pem = _material(entry, kid, source, "public_key")
    try:
        return VerifyingKey.from_public_pem(kid, alg, pem)
    except ValueError as exc:
        raise ConfigError(f"{source} key {kid!r}: its public_key {exc}") from None


def _material(entry: Mapping[str, object], kid: str, source: str, name: str) -> str:
    """``name`` or ``name_file`` (exactly one) of a keys config entry, as text."""
    inline, path = entry.get(name), entry.get(f"{name}_file")
    if (inline is None) == (path is None):
        raise ConfigError(f"{source} key {kid!r} needs exactly one of {name!r}, '{name}_file'")
    if inline is not None:
        if not isinstance(inline, str) or not inline:
            raise ConfigError(f"{source} key {kid!r} has a {name} that is not a non-empty string")
        return inline
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{source} key {kid!r} has {name}_file that is not a path string")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except OSError as exc:
        raise ConfigError(
            f"{source} key {kid!r} has {name}_file {path!r}, which cannot be read: {exc.strerror}"
        ) from None
    if not text:
        raise ConfigError(f"{source} key {kid!r} has {name}_file {path!r}, which is empty")
    return text


# ---- minting ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key to mint tokens with: an HMAC secret or a PEM private key, and its ``kid``."""

    alg: str
    material: Secret = field(repr=False)
    kid: str = ""

    @classmethod
    def from_private_pem(cls, pem: str, *, kid: str = "", alg: str | None = None) -> SigningKey:
        """A private key for RS256 (RSA), ES256 (P-256) or EdDSA (Ed25519); alg inferred."""
        try:
            key = load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError("is not an unencrypted PEM private key") from None
        if alg is None:
            if isinstance(key, rsa.RSAPrivateKey):
                alg = "RS256"
            elif isinstance(key, ec.EllipticCurvePrivateKey):
                alg = "ES256"
            else:
                alg = "EdDSA"
        check_key_type(key, alg)
        return cls(alg=alg, material=Secret(pem), kid=kid)
