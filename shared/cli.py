"""The ``tether`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import orjson

from shared import logs, loop
from shared.errors import ConfigError, TetherError
from shared.ids import new_id
from shared.settings import Env, Secret
from shared.supervisor import dev_secret
from shared.tokens import ALGORITHM, ROLES, SCOPES, SigningKey, mint


def default_data_dir() -> Path:
    env = os.environ.get("TETHER_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tether"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description="Durable agent sessions on NATS.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run nats-server, the gateway and the demo agent")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="default: $TETHER_DATA_DIR or ~/.local/share/tether",
    )
    up.add_argument("--nats-url", default=None, help="use this NATS instead of the bundled one")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8080, help="gateway port")
    up.add_argument("--nats-port", type=int, default=4222, help="bundled nats-server port")
    up.add_argument("--no-demo-agent", action="store_true")

    gw = sub.add_parser("gateway", help="run a gateway (settings from TETHER_* variables)")
    gw.add_argument("--host", default=None)
    gw.add_argument("--port", type=int, default=None)

    sub.add_parser("demo-agent", help="run the demo agent")
    sub.add_parser(
        "presence-service",
        help="run the presence service (needs a system "
        "account user: TETHER_NATS_SYS_USER / TETHER_NATS_SYS_PASSWORD)",
    )

    sub.add_parser("notifier", help="run the webhook notifier (settings from TETHER_* variables)")
    bench = sub.add_parser(
        "bench",
        add_help=False,
        help="run the benchmarks (from a source checkout) and write docs/benchmarks.md; "
        "tether bench --help",
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--gateway", default=os.environ.get("TETHER_GATEWAY_URL", "http://127.0.0.1:8080")
        )
        p.add_argument(
            "--token",
            default=os.environ.get("TETHER_TOKEN"),
            help="default: $TETHER_TOKEN, else a dev token from the data dir",
        )
        p.add_argument("--data-dir", type=Path, default=None)

    streams = sub.add_parser("streams", help="where the session streams' leaders are")
    streams.add_argument("--spread", action="store_true", help="move leaders apart")
    streams.add_argument("--json", action="store_true")
    tail = sub.add_parser("tail", help="follow a session through the gateway")
    tail.add_argument("session")
    tail.add_argument("--since", type=int, default=0)
    tail.add_argument("--raw", action="store_true", help="print every frame as JSON")
    client_args(tail)

    send = sub.add_parser("send", help="send a user message to a session")
    send.add_argument("session")
    send.add_argument("text")
    send.add_argument("--id", default=None, help="message id (dedupe); default: random")
    client_args(send)

    who = sub.add_parser("presence", help="print who is in a session")
    who.add_argument("session")
    client_args(who)

    hooks = sub.add_parser("webhooks", help="manage webhook subscriptions (admin token)")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", required=True)
    add = hooks_sub.add_parser("add", help="subscribe a URL; prints the signing secret once")
    add.add_argument("url")
    add.add_argument(
        "--events",
        nargs="+",
        default=["run.completed", "run.failed"],
        help="run.completed, run.failed, approval.requested",
    )
    scope = add.add_mutually_exclusive_group()
    scope.add_argument("--session", default=None, help="only this session")
    scope.add_argument("--user", default=None, help="only this user")
    add.add_argument("--secret", default=None, help="whsec_...; default: generated")
    client_args(add)
    client_args(hooks_sub.add_parser("list", help="list subscriptions"))
    rm = hooks_sub.add_parser("rm", help="delete a subscription")
    rm.add_argument("id")
    client_args(rm)
    client_args(hooks_sub.add_parser("dead", help="list dead letters"))
    again = hooks_sub.add_parser("replay", help="deliver a dead letter again (same webhook-id)")
    again.add_argument("id")
    client_args(again)

    token = sub.add_parser("token", help="mint a gateway access token")
    token.add_argument(
        "--sessions", nargs="+", default=["*"], help="session ids, prefix* patterns or *"
    )
    token.add_argument("--subject", default="dev")
    token.add_argument("--role", choices=ROLES, default="user")
    token.add_argument("--ttl", type=int, default=3600, help="seconds")
    token.add_argument(
        "--scope",
        nargs="+",
        choices=SCOPES,
        default=None,
        help="actions granted (default: the role's: user/agent read write control, admin all)",
    )
    token.add_argument(
        "--kid",
        default="",
        help="key id header naming one of the gateway's TETHER_JWT_KEYS (without --key-file: "
        "an HS256 key whose secret is in $TETHER_JWT_SECRET)",
    )
    token.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="PEM private key (RSA: RS256, P-256: ES256, Ed25519: EdDSA); "
        "default: HS256 with $TETHER_JWT_SECRET",
    )
    token.add_argument("--audience", default=os.environ.get("TETHER_JWT_AUDIENCE") or "tether")
    token.add_argument("--issuer", default=os.environ.get("TETHER_JWT_ISSUER", ""))
    token.add_argument("--data-dir", type=Path, default=None)
    return parser


def signing_secret(data_dir: Path | None) -> Secret:
    secret = Env().secret("TETHER_JWT_SECRET")
    return secret if secret else dev_secret(data_dir or default_data_dir())


def token_signing_key(args: argparse.Namespace) -> SigningKey:
    """``tether token``'s key: ``--key-file`` (a PEM private key) or the HS256 secret."""
    if args.key_file is None:
        return SigningKey(ALGORITHM, signing_secret(args.data_dir), kid=args.kid)
    try:
        pem = args.key_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--key-file names {str(args.key_file)!r}: {exc.strerror}") from None
    try:
        return SigningKey.from_private_pem(pem, kid=args.kid)
    except ValueError as exc:
        raise ConfigError(f"--key-file {str(args.key_file)!r} {exc}") from None


def client_token(args: argparse.Namespace, role: str = "user") -> str:
    if args.token:
        return str(args.token)
    return mint(
        signing_secret(args.data_dir), subject="cli", sessions=["*"], role=role, ttl_seconds=3600
    )


async def cmd_webhooks(args: argparse.Namespace) -> int:
    """``tether webhooks add|list|rm|dead|replay`` through the gateway's admin API."""
    url = args.gateway.rstrip("/") + "/v1/webhooks"
    headers = {"Authorization": f"Bearer {client_token(args, role='admin')}"}
    command = args.webhooks_command
    method, body = "GET", None
    if command == "add":
        method = "POST"
        scope = {"session": args.session} if args.session else {}
        scope = {"user": args.user} if args.user else scope
        body = {"url": args.url, "events": args.events, "filter": scope}
        if args.secret:
            body["secret"] = args.secret
    elif command == "rm":
        method, url = "DELETE", f"{url}/{args.id}"
    elif command == "dead":
        url = f"{url}/dead"
    elif command == "replay":
        method, url = "POST", f"{url}/dead/{args.id}/replay"
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, json=body, headers=headers) as resp,
    ):
        reply = orjson.loads(await resp.read())
    if resp.status >= 300:
        print(f"tether: {reply.get('error', {}).get('message', resp.status)}", file=sys.stderr)
        return 1
    print(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
    return 0


async def cmd_tail(args: argparse.Namespace) -> int:
    url = args.gateway.rstrip("/").replace("http", "ws", 1)
    params = {"since": str(args.since), "token": client_token(args)}
    texts: dict[str, str] = {}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{url}/v1/sessions/{args.session}/ws", params=params) as ws,
    ):
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            frame = orjson.loads(msg.data)
            if args.raw:
                print(msg.data, flush=True)
                continue
            print_frame(frame, texts)
        if ws.close_code and ws.close_code >= 4000:
            print(f"closed: {ws.close_code}", file=sys.stderr)
            return 1
    return 0


def print_frame(frame: dict[str, object], texts: dict[str, str]) -> None:
    kind = frame.get("type")
    if kind == "hello":
        print(
            f"# session {frame['session']} head={frame['head']} recovered={frame['recovered']}",
            flush=True,
        )
    elif kind == "error":
        print(f"! {frame.get('code')}: {frame.get('message')}", flush=True)
    elif kind == "event":
        event = frame["event"]
        if not isinstance(event, dict):
            return
        etype, mid = event.get("type"), str(event.get("message", ""))
        text = event.get("text") if isinstance(event.get("text"), str) else ""
        if etype == "message.delta":
            texts[mid] = texts.get(mid, "") + str(text)
            print(text, end="", flush=True)
        elif etype in ("message.snapshot", "message.reset"):
            texts[mid] = str(text)
            print(f"\n[{event.get('role', 'agent')} {mid}] {text}", end="", flush=True)
        elif etype == "message.start":
            print(f"\n[agent {mid}] ", end="", flush=True)
        elif etype in ("message.complete",):
            if texts.get(mid) != text:
                print(f"\n[agent {mid}] {text}", end="")
            print(flush=True)
        elif etype in ("message.created", "message.edit"):
            print(f"\n[{event.get('role')} {mid}] {text}", flush=True)
        else:
            print(f"\n<{etype}> {event.get('run', '')}", flush=True)


async def cmd_send(args: argparse.Namespace) -> int:
    url = args.gateway.rstrip("/")
    body = {"id": args.id or new_id("cli-"), "text": args.text}
    headers = {"Authorization": f"Bearer {client_token(args)}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/sessions/{args.session}/messages", json=body, headers=headers) as resp,
    ):
        print(await resp.text())
        return 0 if resp.status < 300 else 1


async def cmd_presence(args: argparse.Namespace) -> int:
    url = args.gateway.rstrip("/")
    headers = {"Authorization": f"Bearer {client_token(args)}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/v1/sessions/{args.session}/presence", headers=headers) as resp,
    ):
        body = orjson.loads(await resp.read())
        if resp.status != 200:
            print(f"tether: {body.get('error', {}).get('message', resp.status)}", file=sys.stderr)
            return 1
    members = body["members"]
    if not members:
        print(f"nobody is in {args.session}")
    for member in sorted(members, key=lambda m: (m["role"], m["participant"])):
        print(
            f"{member['role']:6} {member['participant']:24} {member['state']:10} "
            f"{member['connection']}  {member.get('device', '')[:40]}"
        )
    return 0


def cmd_bench(argv: list[str]) -> int:
    """``tether bench``: ``benchmarks/run.py`` of the source checkout this package runs from."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").exists():
        print("tether: bench needs a source checkout (benchmarks/ beside shared/)", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import run as bench_run  # type: ignore[import-not-found,unused-ignore]

    return int(bench_run.main(argv))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its options pass through to benchmarks/run.py
        try:
            sys.exit(cmd_bench(argv[1:]))
        except KeyboardInterrupt:
            sys.exit(130)
    args = build_parser().parse_args(argv)
    try:
        code = run(args)
    except ConfigError as exc:
        print(f"tether: configuration error: {exc}", file=sys.stderr)
        code = 2
    except TetherError as exc:
        print(f"tether: {exc}", file=sys.stderr)
        code = 1
    except aiohttp.ClientError as exc:
        print(f"tether: cannot reach the gateway: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


def run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "up":
        from shared.supervisor import up

        logs.configure("tether-up")
        data_dir = args.data_dir or default_data_dir()
        return asyncio.run(
            up(
                data_dir,
                nats_url=args.nats_url,
                host=args.host,
                port=args.port,
                nats_port=args.nats_port,
                demo_agent=not args.no_demo_agent,
            )
        )
    if command == "gateway":
        from services.gateway.app import serve
        from services.gateway.settings import GatewaySettings

        if args.host is not None:
            os.environ["TETHER_GATEWAY_HOST"] = args.host
        if args.port is not None:
            os.environ["TETHER_GATEWAY_PORT"] = str(args.port)
        logs.configure("gateway")
        loop.run(serve(GatewaySettings.from_env()))
        return 0
    if command == "demo-agent":
        from shared.demo_agent import run_demo_agent

        logs.configure("demo-agent")
        loop.run(run_demo_agent())
        return 0
    if command == "presence-service":
        from services.presence.service import serve as serve_presence
        from services.presence.settings import PresenceSettings

        logs.configure("presence")
        loop.run(serve_presence(PresenceSettings.from_env()))
        return 0
    if command == "notifier":
        from services.notifier.service import serve as serve_notifier
        from services.notifier.settings import NotifierSettings

        logs.configure("notifier")
        loop.run(serve_notifier(NotifierSettings.from_env()))
        return 0
    if command == "webhooks":
        return asyncio.run(cmd_webhooks(args))
    if command == "presence":
        return asyncio.run(cmd_presence(args))
    if command == "tail":
        return asyncio.run(cmd_tail(args))
    if command == "streams":
        from shared import leaders

        logs.configure("tether-cli")  # logs to stderr: stdout is the table or JSON
        return asyncio.run(leaders.command(move=args.spread, as_json=args.json))
    if command == "send":
        return asyncio.run(cmd_send(args))
    if command == "token":
        try:
            tok = mint(
                token_signing_key(args),
                subject=args.subject,
                sessions=args.sessions,
                role=args.role,
                ttl_seconds=args.ttl,
                audience=args.audience,
                issuer=args.issuer,
                scopes=args.scope,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        print(tok)
        return 0
    raise ConfigError(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
