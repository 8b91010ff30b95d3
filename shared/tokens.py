"""Access tokens: signed JWTs scoped to session ids (or patterns) and a role.

Claims: ``sub`` (participant id), ``role`` (``user``, ``agent`` or ``admin``),
``sessions`` (a list of exact session ids, ``prefix*`` patterns or ``*``), ``aud``,
``exp``; ``iss`` when an issuer is configured. The algorithm is pinned to HS256.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import jwt

from shared.errors import Forbidden, InvalidId, Unauthorized
from shared.ids import check_id
from shared.settings import Secret

ALGORITHM = "HS256"
ROLES = ("user", "agent", "admin")
DEFAULT_AUDIENCE = "tether"


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified token."""

    subject: str
    role: str
    sessions: tuple[str, ...]
    expires_at: int

    def grants(self, session: str) -> bool:
        for pattern in self.sessions:
            if pattern == "*" or pattern == session:
                return True
            if pattern.endswith("*") and session.startswith(pattern[:-1]):
                return True
        return False

    def require(self, session: str) -> None:
        if not self.grants(session):
            raise Forbidden(f"token does not grant session {session!r}")


def mint(
    secret: Secret,
    *,
    subject: str,
    sessions: Sequence[str],
    role: str = "user",
    ttl_seconds: int = 3600,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str = "",
) -> str:
    """Sign a token (for `tether token` and app servers written in Python)."""
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
    if issuer:
        payload["iss"] = issuer
    return jwt.encode(payload, secret.reveal(), algorithm=ALGORITHM)


def verify(
    token: str | None,
    secret: Secret,
    *,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str = "",
    leeway: float = 5.0,
) -> Claims:
    """Verify signature, algorithm, ``exp``, ``nbf``, ``aud`` (and ``iss``); raise Unauthorized."""
    if not token:
        raise Unauthorized("missing token: pass ?token= or an Authorization: Bearer header")
    try:
        payload = jwt.decode(
            token,
            secret.reveal(),
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer or None,
            leeway=leeway,
            options={"require": ["exp", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("token audience is not accepted here") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("token issuer is not accepted here") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("token signature is invalid") from None
    except jwt.InvalidAlgorithmError:
        raise Unauthorized(f"token algorithm is not accepted (only {ALGORITHM})") from None
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"token is invalid: {exc}") from None
    role = payload.get("role", "user")
    sessions = payload.get("sessions")
    if role not in ROLES:
        raise Unauthorized(f"token role {role!r} is not one of {', '.join(ROLES)}")
    if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
        raise Unauthorized("token claim 'sessions' must be a list of strings")
    try:
        subject = check_id(payload["sub"], "token subject")
    except InvalidId as exc:
        raise Unauthorized(exc.message) from None
    return Claims(
        subject=subject, role=role, sessions=tuple(sessions), expires_at=int(payload["exp"])
    )
