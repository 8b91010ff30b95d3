"""NATS users per role and what each may publish and subscribe to (docs/security.md).

One application account (``TETHER``) holds the streams; each process connects as the user
of its role, and the server enforces these subject permissions:

- ``agent``: stores agent messages and run events (``tether.s.*.a.*``, ``tether.s.*.r.*``),
  reads the session log (batched direct get), runs its inbox (durables named
  ``tether-inbox-*`` / ``INBOX*``), writes *agent* presence keys, follows live control,
  run and presence subjects, and asks the presence service who is listening. It cannot
  store user messages or control signals (no forged user input), write user presence, read
  the presence bucket, the webhook subscriptions (their signing secrets), read positions or
  dead letters, manage streams, or reach ``$SYS``.
- ``gateway``: stores what devices send (user messages, control signals, approval
  decisions, Durable Streams appends) and reads everything it serves; it cannot store agent
  messages (``tether.s.*.a.*``).
- ``presence``: the presence bucket and the ``who is listening`` responder; with a second
  connection as the ``sys`` user of the system account for connect/disconnect events.
- ``notifier``: its trigger consumer on run events, the webhook buckets and its delivery
  stream; it cannot store anything in the session log.
- ``admin`` (user ``tether``): everything in the account, for the ``tether`` CLI and
  operators.

``$SYS.>`` is denied to every application user; only the ``sys`` user of the system account
sees the server's events. ``tether up`` renders these into its generated config;
deploy/nats.conf (compose) is the same text with passwords from environment variables
(``render_deploy_config``; a test keeps the file equal to it), and deploy/nats-cluster.conf
(the compose ``cluster`` profile) adds the routes of a three-node cluster
(``render_deploy_cluster_config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from shared import partitions
from shared import subjects as s
from shared.partitions import mapping as partition_map

ROLES = ("admin", "gateway", "presence", "notifier", "agent")
# The NATS user name of each role (the admin keeps the historical name "tether").
USERS = {"admin": "tether", "gateway": "gateway", "presence": "presence"}
USERS |= {"notifier": "notifier", "agent": "agent"}
# The environment variable that holds each role's password under compose.
PASSWORD_ENV = {
    "admin": "TETHER_NATS_PASSWORD",
    "gateway": "TETHER_GATEWAY_NATS_PASSWORD",
    "presence": "TETHER_PRESENCE_NATS_PASSWORD",
    "notifier": "TETHER_NOTIFIER_NATS_PASSWORD",
    "agent": "TETHER_AGENT_NATS_PASSWORD",
}
SYS_PASSWORD_ENV = "TETHER_SYS_PASSWORD"

API = "$JS.API"
SESSIONS = "TETHER_SESSIONS"
REPLIES = "_INBOX.>"
NO_SYS = ["$SYS.>"]


def _on_stream(stream: str) -> list[str]:
    """What an agent may do on one session stream: info, batched reads, its inbox."""
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        # The inbox: its durable only (SDK default tether-inbox-*, node example INBOX*).
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"{API}.CONSUMER.CREATE.{stream}.*",
        f"{API}.CONSUMER.CREATE.{stream}.*.>",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
    ]


def _log(pattern: str, n: int) -> list[str]:
    """A session log subject pattern and, partitioned, its mapped form (checked by NATS)."""
    return partitions.mapped(pattern, n)


def _agent(n: int) -> dict[str, Any]:
    log, live = s.LOG_ROOT, s.LIVE_ROOT
    presence_stream, key_root = s.PRESENCE_STREAM, s.PRESENCE_KEY_ROOT
    return {
        "publish": {
            "allow": [
                *_log(f"{log}.*.{s.AGENT}.*", n),
                *_log(f"{log}.*.{s.RUN}.*", n),
                f"{API}.INFO",
                f"{API}.STREAM.INFO.{presence_stream}",
                *(a for name in partitions.stream_names(SESSIONS, n) for a in _on_stream(name)),
                f"{key_root}.*.agent.>",
                f"{s.ASK_PRESENCE_ROOT}.*",
            ],
            "deny": [
                *NO_SYS,
                *_log(f"{log}.*.{s.USER}.*", n),
                *_log(f"{log}.*.{s.CONTROL}.*", n),
            ],
        },
        "subscribe": {
            "allow": [
                REPLIES,
                f"{live}.*.{s.CONTROL}.*",
                f"{live}.*.{s.RUN}.*",
                f"{s.PRESENCE_LIVE_ROOT}.*.user.>",
                f"{s.PRESENCE_LIVE_ROOT}.*.agent.>",
            ],
            "deny": NO_SYS,
        },
    }


def _gateway(n: int) -> dict[str, Any]:
    return {
        "publish": {
            "allow": [f"{s.PREFIX}.>", f"{API}.>", "$KV.>", "$JS.ACK.>", "$JS.FC.>"],
            "deny": [*NO_SYS, *_log(f"{s.LOG_ROOT}.*.{s.AGENT}.*", n)],
        },
        "subscribe": {"allow": [REPLIES, f"{s.PREFIX}.>"], "deny": NO_SYS},
    }


def _presence(n: int) -> dict[str, Any]:
    return {
        "publish": {
            "allow": [f"{API}.>", f"{s.PRESENCE_KEY_ROOT}.>", "$JS.ACK.>"],
            "deny": NO_SYS,
        },
        "subscribe": {
            "allow": [REPLIES, f"{s.PRESENCE_LIVE_ROOT}.>", f"{s.ASK_PRESENCE_ROOT}.*"],
            "deny": NO_SYS,
        },
        "allow_responses": True,  # answers to ``who is listening`` requests
    }


def _notifier(n: int) -> dict[str, Any]:
    log_roots = [f"{s.LOG_ROOT}.>"] + ([f"{s.PARTITION_ROOT}.>"] if n > 1 else [])
    return {
        "publish": {
            "allow": [f"{API}.>", "$KV.>", "$JS.ACK.>", f"{s.DELIVER_ROOT}.>"],
            "deny": [*NO_SYS, *log_roots, f"{s.PRESENCE_KEY_ROOT}.>"],
        },
        "subscribe": {"allow": [REPLIES, f"{s.DELIVER_ROOT}.>"], "deny": NO_SYS},
    }


def _admin(n: int) -> dict[str, Any]:
    return {"publish": {"deny": NO_SYS}, "subscribe": {"deny": NO_SYS}}


def permissions(role: str, partitions: int = 1) -> dict[str, Any]:
    """The nats-server ``permissions`` block of one role, for a log of ``partitions``."""
    builders = {
        "admin": _admin,
        "gateway": _gateway,
        "presence": _presence,
        "notifier": _notifier,
        "agent": _agent,
    }
    if role not in builders:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return builders[role](partitions)


def _user(role: str, password: str, n: int) -> str:
    name, perms = orjson.dumps(USERS[role]).decode(), orjson.dumps(permissions(role, n)).decode()
    return f"{{ user: {name}, password: {password}, permissions: {perms} }}"


def render_accounts(passwords: Mapping[str, str], sys_password: str, partitions: int = 1) -> str:
    """The ``accounts`` block and ``system_account``; passwords are inserted verbatim
    (quoted strings for a generated config, ``$VARIABLE`` references for compose). With
    ``partitions`` > 1 the application account maps each session to its partition."""
    users = ",\n      ".join(_user(role, passwords[role], partitions) for role in ROLES)
    mappings = "".join(
        f"\n    mappings: {{ {orjson.dumps(src).decode()}: {orjson.dumps(dest).decode()} }}"
        for src, dest in partition_map(partitions).items()
    )
    return f"""accounts {{
  SYS {{
    users: [ {{ user: sys, password: {sys_password} }} ]
  }}
  TETHER {{
    jetstream: enabled{mappings}
    users: [
      {users}
    ]
  }}
}}
system_account: SYS
"""


def _deploy_accounts(partitions: int = 1) -> str:
    passwords = {role: f"${PASSWORD_ENV[role]}" for role in ROLES}
    return render_accounts(passwords, f"${SYS_PASSWORD_ENV}", partitions)


_DEPLOY_SERVER = """server_name: $NATS_SERVER_NAME
listen: 0.0.0.0:4222
http: 0.0.0.0:8222
max_payload: 8MB

jetstream {
  store_dir: $NATS_STORE_DIR
}
"""


def render_deploy_config() -> str:
    """deploy/nats.conf: the compose server's config, passwords from the environment."""
    return f"""# nats-server configuration for compose.yaml; generated by shared/permissions.py
# (render_deploy_config), and a test keeps this file equal to it. Passwords come from the
# environment ({", ".join(PASSWORD_ENV[r] for r in ROLES)}, {SYS_PASSWORD_ENV});
# nothing secret is baked into the file. Users and permissions: docs/security.md.
{_DEPLOY_SERVER}
{_deploy_accounts()}"""


# compose.yaml's ``cluster`` profile: three nodes that route to each other by service name.
CLUSTER_NODES = ("nats-1", "nats-2", "nats-3")
CLUSTER_NAME = "tether"
ROUTE_PORT = 6222
# The cluster profile spreads sessions over three session streams (one leader each);
# deploy/cluster.env sets the services' TETHER_STREAM_PARTITIONS to the same number.
CLUSTER_PARTITIONS = 3


def render_deploy_cluster_config(nodes: tuple[str, ...] = CLUSTER_NODES) -> str:
    """deploy/nats-cluster.conf: the config every node of the compose ``cluster`` profile
    runs (each sets its own ``NATS_SERVER_NAME``); users and accounts as deploy/nats.conf."""
    routes = "\n".join(f"    nats-route://{node}:{ROUTE_PORT}" for node in nodes)
    names = ", ".join(nodes)
    return f"""# nats-server configuration for compose.yaml's `cluster` profile ({names});
# generated by shared/permissions.py (render_deploy_cluster_config), and a test keeps this
# file equal to it. Every node runs this file with its own NATS_SERVER_NAME and store; each
# lists every node in routes (its own entry is ignored). Passwords come from the
# environment, as in deploy/nats.conf. Routes are not authenticated: the route port
# ({ROUTE_PORT}) must stay on the private compose network (never publish it). Sessions are
# spread over {CLUSTER_PARTITIONS} session streams (the mapping in the TETHER account); the
# services' TETHER_STREAM_PARTITIONS (deploy/cluster.env) must say {CLUSTER_PARTITIONS} too.
{_DEPLOY_SERVER}
cluster {{
  name: {CLUSTER_NAME}
  listen: 0.0.0.0:{ROUTE_PORT}
  routes: [
{routes}
  ]
}}

{_deploy_accounts(CLUSTER_PARTITIONS)}"""
