"""Access tokens: signed JWTs scoped to session ids (or patterns), actions and a role.

Claims: ``sub`` (participant id), ``role`` (``user``, ``agent`` or ``admin``),
``sessions`` (a list of exact session ids, ``prefix*`` patterns or ``*``), ``scope``
(optional: ``read``, ``write``, ``control``, ``admin``; default derived from the role),
``aud``, ``exp``, optional ``nbf``; ``iss`` when an issuer is configured.

Verification picks the key by the ``kid`` header (no ``kid``: the key ``default``, i.e.
``TETHER_JWT_SECRET``) and pins the algorithm to the one configured for that key: the
token's own ``alg`` header is only compared, never trusted, so ``none``, an HMAC token
"signed" with an RSA public key, or any other algorithm is refused. Nothing here puts a
token (or a secret) into an error message or a log line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from shared.errors import Forbidden, InvalidId, Unauthorized
from shared.ids import check_id
from shared.keys import (
    ALGORITHM,
    ALGORITHMS,
    ASYMMETRIC_ALGORITHMS,
    DEFAULT_KID,
    HMAC_ALGORITHMS,
    KeyRing,
    SigningKey,
    VerifyingKey,
    keys_from_json,
)
from shared.settings import Secret

# Key types live in shared.keys; they are re-exported here for callers of mint/verify.
__all__ = [
    "ALGORITHM",
    "ALGORITHMS",
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_KID",
    "HMAC_ALGORITHMS",
    "Claims",
    "KeyRing",
    "SigningKey",
    "VerifyingKey",
    "keys_from_json",
    "mint",
    "verify",
]

ROLES = ("user", "agent", "admin")
DEFAULT_AUDIENCE = "tether"

READ = "read"
WRITE = "write"
CONTROL = "control"
ADMIN = "admin"
SCOPES = (READ, WRITE, CONTROL, ADMIN)
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "user": frozenset((READ, WRITE, CONTROL)),
    "agent": frozenset((READ, WRITE, CONTROL)),
    "admin": frozenset(SCOPES),
}


# ---- claims -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified token."""

    subject: str
    role: str
    sessions: tuple[str, ...]
    expires_at: int
    scopes: frozenset[str] | None = None  # None: the role's default scopes
    key_id: str = DEFAULT_KID

    @property
    def granted_scopes(self) -> frozenset[str]:
        if self.scopes is None:
            return ROLE_SCOPES.get(self.role, frozenset())
        return self.scopes

    def grants(self, session: str) -> bool:
        for pattern in self.sessions:
            if pattern == "*" or pattern == session:
                return True
            if pattern.endswith("*") and session.startswith(pattern[:-1]):
                return True
        return False

    def allows(self, scope: str) -> bool:
        return scope in self.granted_scopes

    def require_scope(self, scope: str) -> None:
        """Raise Forbidden unless the token grants the action ``scope``."""
        if not self.allows(scope):
            held = ", ".join(s for s in SCOPES if s in self.granted_scopes) or "none"
            raise Forbidden(f"token does not grant scope {scope!r} (it grants: {held})")

    def require(self, session: str, scope: str = WRITE) -> None:
        """Raise Forbidden unless the token grants ``session`` and the action ``scope``.

        Callers name the action; the default (``write``) fails closed for those that don't.
        """
        if not self.grants(session):
            raise Forbidden(f"token does not grant session {session!r}")
        self.require_scope(scope)


def parse_scopes(raw: object, role: str) -> frozenset[str] | None:
    """The ``scope`` claim: a list of names or one space-separated string (RFC 8693)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        names: list[object] = list(raw.split())
    elif isinstance(raw, list):
        names = list(raw)
    else:
        raise Unauthorized("token claim 'scope' must be a list of strings or a string")
    scopes: set[str] = set()
    for name in names:
        if not isinstance(name, str) or name not in SCOPES:
            shown = str(name)[:32]
            raise Unauthorized(f"token scope {shown!r} is not one of {', '.join(SCOPES)}")
        if name not in ROLE_SCOPES[role]:
            raise Unauthorized(f"token scope {name!r} is not allowed for role {role!r}")
        scopes.add(name)
    return frozenset(scopes)


def mint(
    key: Secret | SigningKey,
    *,
    subject: str,
    sessions: Sequence[str],
    role: str = "user",
    ttl_seconds: int = 3600,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str = "",
    scopes: Sequence[str] | None = None,
    not_before: int | None = None,
) -> str:
    """Sign a token (for `tether token` and app servers written in Python).

    A bare :class:`Secret` signs HS256 without ``kid`` (the gateway's ``default`` key).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    check_id(subject, "subject")
    for pattern in sessions:
        if pattern != "*":
            check_id(pattern[:-1] if pattern.endswith("*") else pattern, "session pattern")
    now = int(time.time())
    payload: dict[str, object] = {
        "sub": subject,
        "role": role,
        "sessions": list(sessions),
        "aud": audience,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if scopes is not None:
        for name in scopes:
            if name not in ROLE_SCOPES[role]:
                allowed = ", ".join(s for s in SCOPES if s in ROLE_SCOPES[role])
                raise ValueError(f"scope {name!r} is not one of {allowed} (role {role!r})")
        payload["scope"] = list(dict.fromkeys(scopes))
    if not_before is not None:
        payload["nbf"] = not_before
    if issuer:
        payload["iss"] = issuer
    signing = key if isinstance(key, SigningKey) else SigningKey(ALGORITHM, key)
    headers = {"kid": signing.kid} if signing.kid else None
    material: Any = signing.material.reveal()
    if signing.alg not in HMAC_ALGORITHMS:
        material = load_pem_private_key(material.encode(), password=None)
    return jwt.encode(payload, material, algorithm=signing.alg, headers=headers)


# ---- verifying --------------------------------------------------------------------------


def verify(
    token: str | None,
    keys: Secret | KeyRing,
    *,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str = "",
    leeway: float = 5.0,
) -> Claims:
    """Verify ``kid``, pinned algorithm, signature, ``exp``, ``nbf``, ``aud`` (and ``iss``).

    Raise Unauthorized with a message that says why and never contains the token.
    """
    if not token:
        raise Unauthorized("missing token: pass ?token= or an Authorization: Bearer header")
    ring = keys if isinstance(keys, KeyRing) else KeyRing.from_secret(keys)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("token is invalid: not a well-formed JWT") from None
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise Unauthorized("token is invalid: header 'kid' is not a string")
    key = ring.find(kid)
    alg = header.get("alg")
    if alg != key.alg:  # pinned per key: never taken from the token
        shown = str(alg)[:16]
        raise Unauthorized(
            f"token algorithm is not accepted (only {key.alg}) for key {key.kid!r}, not {shown!r}"
        )
    try:
        payload = jwt.decode(
            token,
            key.material(),
            algorithms=[key.alg],
            audience=audience,
            issuer=issuer or None,
            leeway=leeway,
            options={"require": ["exp", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.ImmatureSignatureError as exc:
        claim = "nbf" if "nbf" in str(exc) else "iat"
        raise Unauthorized(f"token is not yet valid ({claim} is in the future)") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("token audience is not accepted here") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("token issuer is not accepted here") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("token signature is invalid") from None
    except jwt.InvalidAlgorithmError:
        raise Unauthorized(f"token algorithm is not accepted (only {key.alg})") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"token is invalid: claim {exc.claim!r} is missing") from None
    except jwt.PyJWTError as exc:
        # Library messages are fixed strings; the class name is enough and echoes nothing.
        raise Unauthorized(f"token is invalid ({type(exc).__name__})") from None
    return _claims(payload, key.kid)


def _claims(payload: Mapping[str, Any], kid: str) -> Claims:
    role = payload.get("role", "user")
    sessions = payload.get("sessions")
    if role not in ROLES:
        shown = str(role)[:32]
        raise Unauthorized(f"token role {shown!r} is not one of {', '.join(ROLES)}")
    if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
        raise Unauthorized("token claim 'sessions' must be a list of strings")
    scopes = parse_scopes(payload.get("scope"), role)
    try:
        subject = check_id(payload["sub"], "token subject")
    except InvalidId as exc:
        raise Unauthorized(exc.message) from None
    return Claims(
        subject=subject,
        role=role,
        sessions=tuple(sessions),
        expires_at=int(payload["exp"]),
        scopes=scopes,
        key_id=kid,
    )
