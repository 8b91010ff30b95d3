"""Every NATS subject, stream and bucket name Tether uses, in one place.

Session log subjects (stored in the session stream)::

    tether.s.{session}.u.{message}   user messages and their edits / deletes
    tether.s.{session}.a.{message}   agent messages: start, delta, complete, reset, edit, delete
    tether.s.{session}.r.{run}       run lifecycle: started, progress, completed, failed, cancelled;
                                     approvals: requested, decided, expired
    tether.s.{session}.c.{control}   control signals from devices: cancel, steer

The stream republishes each stored message to ``tether.live.{...}`` (same tail) with the
``Nats-Sequence`` header; gateways subscribe there for live fan-out.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.ids import check_id

PREFIX = "tether"
LOG_ROOT = f"{PREFIX}.s"
LIVE_ROOT = f"{PREFIX}.live"
PARTITION_ROOT = f"{PREFIX}.p"  # partitioned layouts only (shared/partitions.py)

STREAM_SUBJECTS = f"{LOG_ROOT}.>"
REPUBLISH_SOURCE = f"{LOG_ROOT}.>"
REPUBLISH_DEST = f"{LIVE_ROOT}.>"

DEFAULT_STREAM = "TETHER_SESSIONS"

USER = "u"
AGENT = "a"
RUN = "r"
CONTROL = "c"
KINDS = (USER, AGENT, RUN, CONTROL)

# Headers of the wire contract.
MSG_ID = "Nats-Msg-Id"
ROLLUP = "Nats-Rollup"
TTL = "Nats-TTL"
SEQUENCE = "Nats-Sequence"
LAST_SEQUENCE = "Nats-Last-Sequence"  # on republished messages: the subject's previous seq
STREAM_SUBJECT = "Nats-Subject"
STREAM = "Nats-Stream"  # on republished messages: the stream that stored it


def session_filter(session: str) -> str:
    """Every stored subject of one session (for history reads)."""
    return f"{LOG_ROOT}.{check_id(session)}.>"


def kind_filter(session: str, kind: str) -> str:
    """Every stored subject of one kind (``u``, ``a``, ``r``, ``c``) in one session."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return f"{LOG_ROOT}.{check_id(session)}.{kind}.*"


def live_filter(session: str) -> str:
    """Every republished (live) subject of one session."""
    return f"{LIVE_ROOT}.{check_id(session)}.>"


def user_message(session: str, message: str) -> str:
    return f"{LOG_ROOT}.{check_id(session)}.{USER}.{check_id(message, 'message id')}"


def agent_message(session: str, message: str) -> str:
    return f"{LOG_ROOT}.{check_id(session)}.{AGENT}.{check_id(message, 'message id')}"


def message_kind(role: str) -> str:
    """The subject kind of a message by its author's role: ``u`` for users, else ``a``."""
    return USER if role == "user" else AGENT


def message(session: str, message_id: str, role: str) -> str:
    """The subject of a message, by its author's role."""
    kind = message_kind(role)
    return f"{LOG_ROOT}.{check_id(session)}.{kind}.{check_id(message_id, 'message id')}"


def run_events(session: str, run: str) -> str:
    return f"{LOG_ROOT}.{check_id(session)}.{RUN}.{check_id(run, 'run id')}"


def live_run(session: str, run: str) -> str:
    """The republished events of one run (an agent waiting for an approval's decision)."""
    return f"{LIVE_ROOT}.{check_id(session)}.{RUN}.{check_id(run, 'run id')}"


def control(session: str, control_id: str) -> str:
    """The stored subject of one control signal (cancel or steer)."""
    return f"{LOG_ROOT}.{check_id(session)}.{CONTROL}.{check_id(control_id, 'control id')}"


def live_control(session: str) -> str:
    """The republished control signals of one session (agents learn of them at once)."""
    return f"{LIVE_ROOT}.{check_id(session)}.{CONTROL}.*"


# What an agent's inbox consumer reads: every session's user messages and control signals.
INBOX_FILTERS = (f"{LOG_ROOT}.*.{USER}.*", f"{LOG_ROOT}.*.{CONTROL}.*")


@dataclass(frozen=True, slots=True)
class LogSubject:
    """A parsed session log subject (either the stored or the live form)."""

    session: str
    kind: str
    key: str


def parse(subject: str) -> LogSubject | None:
    """Parse ``tether.s|live.{session}.{kind}.{key}``; None if it is not one."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != PREFIX or parts[1] not in ("s", "live"):
        return None
    if parts[3] not in KINDS:
        return None
    return LogSubject(session=parts[2], kind=parts[3], key=parts[4])


# ---- presence ------------------------------------------------------------------------
# The presence bucket: one key per (session, role, participant, connection). The bucket's
# stream republishes every change to ``tether.presence.{key}``; gateways and agents follow
# a session there, and read a snapshot with a batched direct get.
PRESENCE_BUCKET = "TETHER_PRESENCE"
PRESENCE_STREAM = f"KV_{PRESENCE_BUCKET}"
PRESENCE_KEY_ROOT = f"$KV.{PRESENCE_BUCKET}"
PRESENCE_LIVE_ROOT = f"{PREFIX}.presence"
ROLES = ("user", "agent")

# The server's connection events (system account).
SYS_CONNECT = "$SYS.ACCOUNT.*.CONNECT"
SYS_DISCONNECT = "$SYS.ACCOUNT.*.DISCONNECT"
SYS_CONNZ = "$SYS.REQ.SERVER.PING.CONNZ"


def presence_key(session: str, role: str, participant: str, connection: str) -> str:
    """The bucket key ``{session}.{role}.{participant}.{connection}``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return ".".join(
        (
            check_id(session),
            role,
            check_id(participant, "participant id"),
            check_id(connection, "connection id"),
        )
    )


# Who is in a session, answered by the presence service (request/reply, queue group), for
# agents whose NATS user may not read the presence bucket (docs/protocol.md §14).
ASK_PRESENCE_ROOT = f"{PREFIX}.ask.presence"
ASK_PRESENCE_QUEUE = "tether-presence"


def ask_presence(session: str) -> str:
    return f"{ASK_PRESENCE_ROOT}.{check_id(session)}"


def presence_subject(key: str) -> str:
    return f"{PRESENCE_KEY_ROOT}.{key}"


def presence_filter(session: str) -> str:
    """Every stored presence key of one session (for snapshots)."""
    return f"{PRESENCE_KEY_ROOT}.{check_id(session)}.>"


def presence_live(session: str, role: str | None = None) -> str:
    """The republished presence changes of one session (optionally of one role)."""
    tail = f"{role}.>" if role else ">"
    return f"{PRESENCE_LIVE_ROOT}.{check_id(session)}.{tail}"


# ---- webhooks (notifier) -------------------------------------------------------------
# Subscriptions: a KV bucket, key = subscription id. Device read positions: a KV bucket,
# key ``{session}.{participant}``, value the highest sequence delivered to any of that
# participant's devices. Deliveries: a work-queue stream of jobs. Dead letters: a KV
# bucket, key = webhook-id.
WEBHOOKS_BUCKET = "TETHER_WEBHOOKS"
CURSORS_BUCKET = "TETHER_CURSORS"
DEAD_LETTERS_BUCKET = "TETHER_WEBHOOK_DEAD"
DELIVERIES_STREAM = "TETHER_WEBHOOK_DELIVERIES"
DELIVER_ROOT = f"{PREFIX}.webhooks.deliver"
RUN_EVENTS_FILTER = f"{LOG_ROOT}.*.{RUN}.*"
NOTIFIER_TRIGGER_DURABLE = "tether-notifier"
NOTIFIER_DELIVERY_DURABLE = "tether-notifier-delivery"


def cursor_key(session: str, participant: str) -> str:
    """The read-position key ``{session}.{participant}``."""
    return f"{check_id(session)}.{check_id(participant, 'participant id')}"


def delivery_subject(subscription: str) -> str:
    """Where a delivery job for one subscription is published."""
    return f"{DELIVER_ROOT}.{check_id(subscription, 'subscription id')}"


# ---- durable streams (/v1/stream/*, docs/protocol.md §20) -------------------------------
# One JetStream stream holds every Durable Stream's bytes: one subject per stream
# *incarnation* (``gen``, a random id minted at creation, so a stream deleted and created
# again never sees its old data). Appends republish headers-only to ``tether.dslive.{gen}``:
# long-polls and SSE readers wake there, then read from the stream. Metadata (content type,
# TTL, expiry, closed flag, producer state, fork lineage) lives in a KV bucket keyed by the
# base64url (unpadded) of the stream path.
DS_STREAM = "TETHER_DS"
DS_ROOT = f"{PREFIX}.ds"
DS_LIVE_ROOT = f"{PREFIX}.dslive"
DS_META_BUCKET = "TETHER_DS_META"


def ds_subject(gen: str) -> str:
    """The stored subject of one stream incarnation."""
    return f"{DS_ROOT}.{check_id(gen, 'stream generation')}"


def ds_live(gen: str) -> str:
    """The headers-only republish of one stream incarnation's appends."""
    return f"{DS_LIVE_ROOT}.{check_id(gen, 'stream generation')}"
