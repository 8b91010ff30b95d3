"""Sessions spread over N session streams ("partitions"), each with its own Raft leader.

With ``TETHER_STREAM_PARTITIONS=1`` (the default) the session log is one stream,
``TETHER_SESSIONS``, holding ``tether.s.>``. With N > 1 it is N streams
``TETHER_SESSIONS_0`` … ``TETHER_SESSIONS_{N-1}``, and the wire contract does not change:

- publishers still publish to ``tether.s.{session}.{kind}.{id}``; a subject mapping in the
  NATS account (:func:`mapping`, rendered into the server config by shared/permissions.py)
  rewrites it to ``tether.p.{k}.s.{session}.{kind}.{id}`` where ``k`` is the server's
  ``partition(N, 1)`` of the session token;
- stream ``k`` holds ``tether.p.{k}.s.>`` and transforms it back (``subject_transform``),
  so stored subjects, republished live subjects (``tether.live.>``), dedupe ids and
  rollups are exactly those of the single stream;
- a reader picks a session's stream with the same hash: FNV-1a 32 of the session id,
  modulo N (:func:`partition`, equal to the server's for every id; a test checks it).

N is fixed once chosen: changing it moves sessions to other streams (their history stays
where it was written). The partition count the services are given must equal the one in
the server's mapping; ``streams.verify_partitions`` checks that at start-up.
"""

from __future__ import annotations

from shared import subjects
from shared.ids import check_id

MAX_PARTITIONS = 64

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def partition(session: str, partitions: int) -> int:
    """The partition (0 … N-1) of a session: FNV-1a 32 of its UTF-8 id, modulo N."""
    if partitions <= 1:
        return 0
    digest = _FNV_OFFSET
    for byte in session.encode():
        digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return digest % partitions


def stream_name(base: str, index: int, partitions: int) -> str:
    """The name of partition ``index``'s stream (``base`` itself when not partitioned)."""
    return base if partitions <= 1 else f"{base}_{index}"


def stream_names(base: str, partitions: int) -> tuple[str, ...]:
    """Every session stream, in partition order."""
    return tuple(stream_name(base, k, partitions) for k in range(max(partitions, 1)))


def stream_for(base: str, session: str, partitions: int) -> str:
    """The stream that holds ``session``."""
    return stream_name(base, partition(check_id(session), partitions), partitions)


def stored_subjects(index: int, partitions: int) -> str:
    """The subjects partition ``index``'s stream listens on (after the account mapping)."""
    return subjects.STREAM_SUBJECTS if partitions <= 1 else f"{subjects.PARTITION_ROOT}.{index}.s.>"


def mapping(partitions: int) -> dict[str, str]:
    """The account subject mapping that routes each session to its partition (none for 1)."""
    if partitions <= 1:
        return {}
    dest = (
        f"{subjects.PARTITION_ROOT}.{{{{partition({partitions},1)}}}}.s."
        "{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}"
    )
    return {f"{subjects.LOG_ROOT}.*.*.*": dest}


def mapped(subject_pattern: str, partitions: int) -> list[str]:
    """A permission pattern on ``tether.s.…`` and, when partitioned, its mapped form.

    nats-server checks publish permissions on the subject *after* the account mapping, so
    with N > 1 a user allowed ``tether.s.*.a.*`` must also be allowed ``tether.p.*.s.*.a.*``.
    """
    log_root = f"{subjects.LOG_ROOT}."
    if partitions <= 1 or not subject_pattern.startswith(log_root):
        return [subject_pattern]
    tail = subject_pattern.removeprefix(log_root)
    return [subject_pattern, f"{subjects.PARTITION_ROOT}.*.s.{tail}"]


def probe_session(index: int, partitions: int) -> str:
    """A session id that falls in partition ``index`` (for the start-up mapping check)."""
    n = 0
    while partition(f"tether-probe-{n}", partitions) != index:
        n += 1
    return f"tether-probe-{n}"
