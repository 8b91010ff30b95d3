"""Fast unit tests of the shared building blocks: ids, settings, tokens, compaction, wire."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.settings import GatewaySettings
from services.gateway.ws import close_reason
from shared import wire
from shared.compaction import compact
from shared.errors import BadFrame, ConfigError, Forbidden, InvalidId, Unauthorized
from shared.ids import MAX_ID_LENGTH, check_id, new_id
from shared.settings import Env, NatsSettings, Secret
from shared.tokens import DEFAULT_AUDIENCE, Claims, mint, verify
from shared.wire import StoredEvent

SECRET = Secret("unit-test-secret-0123456789abcdefgh")

# ---- ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a", "Z", "0", "_", "-", "s-abc_DEF-123", "x" * MAX_ID_LENGTH])
def test_check_id_accepts_valid_ids(value: str) -> None:
    """Ids of 1-128 characters from A-Z, a-z, 0-9, '_' and '-' are returned unchanged."""
    assert check_id(value) == value


@pytest.mark.parametrize(
    ("value", "bad"),
    [
        ("a.b", "'.'"),
        ("a*", "'*'"),
        ("a>b", "'>'"),
        ("a b", "' '"),
        ("tab\tid", "'\\t'"),
        ("line\n", "'\\n'"),
        ("a/b", "'/'"),
        ("a:b", "':'"),
        ("ünï", "'ü'"),
        ("ok%20", "'%'"),
    ],
)
def test_check_id_names_the_bad_character(value: str, bad: str) -> None:
    """An id with a forbidden character is rejected with a message naming that character."""
    with pytest.raises(InvalidId) as info:
        check_id(value, "message id")
    message = info.value.message
    assert message.startswith(f"message id {value!r} contains {bad};")
    assert message.endswith("allowed are A-Z, a-z, 0-9, '_' and '-'")
    assert info.value.code == "invalid_id"
    assert (info.value.http_status, info.value.ws_close_code) == (400, 4400)


def test_check_id_rejects_empty_long_and_non_strings() -> None:
    """Empty, over-long and non-string ids each get their own precise message."""
    with pytest.raises(InvalidId, match=r"^session id is empty$"):
        check_id("")
    with pytest.raises(InvalidId) as info:
        check_id("x" * 1000)
    assert info.value.message == "session id is 1000 characters long; the maximum is 128"
    with pytest.raises(InvalidId, match=r"^run id must be a string, not int$"):
        check_id(5, "run id")
    with pytest.raises(InvalidId, match=r"must be a string, not NoneType"):
        check_id(None)


def test_check_id_quotes_at_most_40_characters() -> None:
    """The error message quotes at most the first 40 characters of a bad id."""
    with pytest.raises(InvalidId) as info:
        check_id("a" * 60 + ".")
    assert "a" * 41 not in info.value.message
    assert "'.'" in info.value.message


def test_new_id_is_valid_and_unique() -> None:
    """new_id makes valid, distinct ids that keep their prefix."""
    ids = {new_id("u-") for _ in range(1000)}
    assert len(ids) == 1000
    for value in ids:
        assert value.startswith("u-") and check_id(value) == value


# ---- settings ------------------------------------------------------------------------


def test_env_integer() -> None:
    """Env.integer parses ints, defaults on unset/empty and names variable and value on error."""
    env = Env({"N": "42", "EMPTY": "", "BAD": "abc", "FLOAT": "1.5", "LOW": "3"})
    assert env.integer("N", 1) == 42
    assert env.integer("UNSET", 7) == 7
    assert env.integer("EMPTY", 7) == 7
    with pytest.raises(ConfigError) as info:
        env.integer("BAD", 1)
    assert str(info.value) == "BAD has value 'abc', not a valid int"
    with pytest.raises(ConfigError, match=r"^FLOAT has value '1\.5', not a valid int$"):
        env.integer("FLOAT", 1)
    with pytest.raises(ConfigError) as info:
        env.integer("LOW", 10, minimum=5)
    assert str(info.value) == "LOW has value 3, below the minimum 5"
    assert env.integer("LOW", 10, minimum=3) == 3


def test_env_number() -> None:
    """Env.number parses floats and reports bad values and minimums precisely."""
    env = Env({"X": "2.5", "BAD": "fast", "NEG": "-1"})
    assert env.number("X", 1.0) == 2.5
    assert env.number("UNSET", 1.5) == 1.5
    with pytest.raises(ConfigError, match=r"^BAD has value 'fast', not a valid number$"):
        env.number("BAD", 1.0)
    with pytest.raises(ConfigError, match=r"^NEG has value -1\.0, below the minimum 0$"):
        env.number("NEG", 1.0, minimum=0)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        (" TRUE ", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("OFF", False),
    ],
)
def test_env_boolean_values(raw: str, expected: bool) -> None:
    """Env.boolean accepts 1/0, true/false, yes/no, on/off in any case."""
    assert Env({"B": raw}).boolean("B", not expected) is expected


def test_env_boolean_errors_and_defaults() -> None:
    """Env.boolean defaults when unset or empty and names the variable on a bad value."""
    env = Env({"EMPTY": "", "BAD": "maybe"})
    assert env.boolean("UNSET", True) is True
    assert env.boolean("EMPTY", False) is False
    with pytest.raises(ConfigError) as info:
        env.boolean("BAD", False)
    assert str(info.value) == "BAD has value 'maybe', not a valid bool (use true or false)"


def test_env_string_and_choice() -> None:
    """Env.string treats empty as unset; Env.choice lists the allowed values on error."""
    env = Env({"S": "value", "EMPTY": "", "C": "xml"})
    assert env.string("S", "d") == "value"
    assert env.string("EMPTY", "d") == "d"
    assert env.choice("UNSET", "json", ("json", "console")) == "json"
    with pytest.raises(ConfigError, match=r"^C has value 'xml', not one of json, console$"):
        env.choice("C", "json", ("json", "console"))


def test_env_secret_from_value_and_file(tmp_path: Path) -> None:
    """Env.secret reads NAME or the stripped contents of the file named by NAME_FILE."""
    path = tmp_path / "secret"
    path.write_text("  from-file\n", encoding="utf-8")
    assert Env({"K": "direct"}).secret("K").reveal() == "direct"
    assert Env({"K": "direct", "K_FILE": str(path)}).secret("K").reveal() == "from-file"
    assert Env({}).secret("K").reveal() == ""
    assert Env({}).secret("K", "fallback").reveal() == "fallback"
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        Env({"K_FILE": str(missing)}).secret("K")
    assert str(info.value).startswith(f"K_FILE names {str(missing)!r}, which cannot be read:")


def test_secret_hides_its_value() -> None:
    """Secret never shows its value in repr, str or f-strings; reveal() gives it back."""
    secret = Secret("hunter2")
    assert repr(secret) == "Secret('**********')"
    assert str(secret) == "Secret('**********')"
    assert "hunter2" not in f"{secret} {secret!r} {[secret]}"
    assert secret.reveal() == "hunter2"
    assert repr(Secret("")) == "Secret('')"
    assert bool(secret) and not Secret("")
    assert secret == Secret("hunter2") and secret != Secret("other") and secret != "hunter2"
    assert hash(secret) == hash(Secret("hunter2"))


def test_nats_settings_from_env() -> None:
    """TETHER_NATS_URL takes several comma-separated nats:// URLs and rejects others."""
    env = Env({"TETHER_NATS_URL": " nats://a:4222 , tls://b:4222,", "TETHER_NATS_PASSWORD": "pw"})
    nats = NatsSettings.from_env(env, name="x")
    assert nats.servers == ("nats://a:4222", "tls://b:4222")
    assert nats.password.reveal() == "pw" and "pw" not in repr(nats)
    with pytest.raises(ConfigError, match=r"^TETHER_NATS_URL has value 'http://a', not a nats"):
        NatsSettings.from_env(Env({"TETHER_NATS_URL": "http://a"}))


def test_gateway_settings_need_a_jwt_secret() -> None:
    """GatewaySettings.from_env refuses to start without TETHER_JWT_SECRET."""
    with pytest.raises(ConfigError) as info:
        GatewaySettings.from_env(Env({}))
    assert str(info.value) == (
        "TETHER_JWT_SECRET is not set: the gateway needs it to verify tokens"
    )
    with pytest.raises(ConfigError, match="TETHER_JWT_SECRET is not set"):
        GatewaySettings.from_env(Env({"TETHER_JWT_SECRET": ""}))


def test_gateway_settings_secret_file(tmp_path: Path) -> None:
    """TETHER_JWT_SECRET_FILE is read; an unreadable one is a precise ConfigError."""
    path = tmp_path / "jwt"
    path.write_text("file-secret\n", encoding="utf-8")
    gw = GatewaySettings.from_env(Env({"TETHER_JWT_SECRET_FILE": str(path)}))
    assert gw.jwt_secret.reveal() == "file-secret"
    assert "file-secret" not in repr(gw)
    with pytest.raises(ConfigError, match=r"^TETHER_JWT_SECRET_FILE names .* cannot be read"):
        GatewaySettings.from_env(Env({"TETHER_JWT_SECRET_FILE": str(tmp_path / "missing")}))


def test_gateway_settings_values_and_errors() -> None:
    """GatewaySettings.from_env parses its variables and reports bad ones by name."""
    base = {"TETHER_JWT_SECRET": "s"}
    gw = GatewaySettings.from_env(
        Env({**base, "TETHER_GATEWAY_PORT": "9000", "TETHER_MAX_FRAME_BYTES": "1024"})
    )
    assert (gw.port, gw.max_frame_bytes, gw.jwt_audience) == (9000, 1024, DEFAULT_AUDIENCE)
    assert GatewaySettings.from_env(Env(base)).max_frame_bytes == 64 * 1024
    cases = {
        "TETHER_GATEWAY_PORT": ("http", "TETHER_GATEWAY_PORT has value 'http', not a valid int"),
        "TETHER_MAX_FRAME_BYTES": (
            "100",
            "TETHER_MAX_FRAME_BYTES has value 100, below the minimum",
        ),
        "TETHER_SEND_QUEUE_FRAMES": (
            "1",
            "TETHER_SEND_QUEUE_FRAMES has value 1, below the minimum",
        ),
        "TETHER_WS_HEARTBEAT_SECONDS": ("x", "TETHER_WS_HEARTBEAT_SECONDS has value 'x', not a"),
        "TETHER_STREAM_REPLICAS": ("0", "TETHER_STREAM_REPLICAS has value 0, below the minimum 1"),
        "TETHER_NATS_URL": ("localhost:4222", "TETHER_NATS_URL has value 'localhost:4222'"),
    }
    for name, (raw, message) in cases.items():
        with pytest.raises(ConfigError) as info:
            GatewaySettings.from_env(Env({**base, name: raw}))
        assert str(info.value).startswith(message), (name, str(info.value))


# ---- tokens --------------------------------------------------------------------------


def test_mint_verify_round_trip() -> None:
    """A minted token verifies to the same subject, role, sessions and expiry."""
    before = int(time.time())
    tok = mint(SECRET, subject="alice", sessions=["s-1", "team-*"], role="agent", ttl_seconds=60)
    claims = verify(tok, SECRET)
    assert claims.subject == "alice"
    assert claims.role == "agent"
    assert claims.sessions == ("s-1", "team-*")
    assert before + 60 <= claims.expires_at <= int(time.time()) + 60
    header = jwt.get_unverified_header(tok)
    assert header["alg"] == "HS256"


def test_grants_exact_prefix_and_wildcard() -> None:
    """``team-*`` grants team-1 (and team-) but not teams or team; ``*`` grants everything."""
    claims = Claims(subject="a", role="user", sessions=("team-*", "solo"), expires_at=0)
    assert claims.grants("team-1") and claims.grants("team-abc") and claims.grants("team-")
    assert not claims.grants("teams") and not claims.grants("team") and not claims.grants("x")
    assert claims.grants("solo") and not claims.grants("solo2") and not claims.grants("sol")
    claims.require("team-1")
    with pytest.raises(Forbidden) as info:
        claims.require("teams")
    assert info.value.message == "token does not grant session 'teams'"
    assert (info.value.http_status, info.value.ws_close_code) == (403, 4403)
    anything = Claims(subject="a", role="admin", sessions=("*",), expires_at=0)
    assert anything.grants("whatever") and anything.grants("team-1")
    assert not Claims(subject="a", role="user", sessions=(), expires_at=0).grants("s")


def test_mint_validates_its_input() -> None:
    """mint refuses unknown roles, invalid subjects and invalid session patterns."""
    with pytest.raises(ValueError, match="role must be one of"):
        mint(SECRET, subject="a", sessions=["s"], role="root")
    with pytest.raises(InvalidId, match="subject"):
        mint(SECRET, subject="a.b", sessions=["s"])
    with pytest.raises(InvalidId, match="session pattern"):
        mint(SECRET, subject="a", sessions=["a.*"])
    with pytest.raises(InvalidId, match="session pattern"):
        mint(SECRET, subject="a", sessions=["a>"])
    assert verify(mint(SECRET, subject="a", sessions=["*"]), SECRET).sessions == ("*",)


def _encode(payload: dict[str, Any], key: str = SECRET.reveal(), alg: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=alg)


def _payload(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    payload = {"sub": "a", "role": "user", "sessions": ["s"], "aud": DEFAULT_AUDIENCE}
    # Built at collection time: valid for longer than the whole suite takes to reach it.
    payload.update(iat=now, exp=now + 3600)
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


@pytest.mark.parametrize(
    ("tok", "message"),
    [
        (None, "missing token"),
        ("", "missing token"),
        ("garbage", "token is invalid"),
        (_encode(_payload(exp=int(time.time()) - 60)), "token expired"),
        (_encode(_payload(), key="another-secret-0123456789abcdefgh"), "signature is invalid"),
        (_encode(_payload(aud="elsewhere")), "audience is not accepted"),
        (_encode(_payload(aud=None)), "token is invalid"),
        (_encode(_payload(exp=None)), "token is invalid"),
        (_encode(_payload(sub=None)), "token is invalid"),
        (_encode(_payload(role="root")), "role 'root' is not one of"),
        (_encode(_payload(sessions="s")), "'sessions' must be a list of strings"),
        (_encode(_payload(sessions=None)), "'sessions' must be a list of strings"),
        (_encode(_payload(sessions=["s", 1])), "'sessions' must be a list of strings"),
        (_encode(_payload(sub="a b")), "token subject 'a b' contains ' '"),
    ],
)
def test_verify_rejects_bad_tokens(tok: str | None, message: str) -> None:
    """verify raises Unauthorized (401/4401) with a message saying what is wrong."""
    with pytest.raises(Unauthorized) as info:
        verify(tok, SECRET)
    assert message in info.value.message
    assert (info.value.code, info.value.http_status, info.value.ws_close_code) == (
        "unauthorized",
        401,
        4401,
    )


def test_verify_pins_the_algorithm() -> None:
    """Tokens signed with HS512 (right secret) or with alg none are refused."""
    payload = _payload()
    hs512 = jwt.encode(payload, SECRET.reveal() * 2, algorithm="HS512")
    unsigned = jwt.encode(payload, None, algorithm="none")
    for tok in (hs512, unsigned):
        with pytest.raises(Unauthorized, match=r"algorithm is not accepted \(only HS256\)"):
            verify(tok, Secret(SECRET.reveal() * 2) if tok is hs512 else SECRET)


def test_verify_leeway_and_issuer() -> None:
    """A token expired within the leeway still verifies; a configured issuer is enforced."""
    recent = mint(SECRET, subject="a", sessions=["s"], ttl_seconds=-2)
    assert verify(recent, SECRET).subject == "a"
    with pytest.raises(Unauthorized, match="token expired"):
        verify(recent, SECRET, leeway=0)
    issued = mint(SECRET, subject="a", sessions=["s"], issuer="app")
    assert verify(issued, SECRET, issuer="app").subject == "a"
    with pytest.raises(Unauthorized, match="issuer is not accepted"):
        verify(issued, SECRET, issuer="other")
    with pytest.raises(Unauthorized, match="token is invalid"):
        verify(mint(SECRET, subject="a", sessions=["s"]), SECRET, issuer="app")
    other_aud = mint(SECRET, subject="a", sessions=["s"], audience="chat")
    assert verify(other_aud, SECRET, audience="chat").subject == "a"


# ---- compaction ----------------------------------------------------------------------


def ev(seq: int, type_: str, message: str | None = "m", kind: str = "a", **fields: Any) -> Any:
    event: dict[str, Any] = {"v": 1, "type": type_, **fields}
    if message is not None:
        event["message"] = message
    return StoredEvent(seq=seq, kind=kind, key=message or "", event=event)


def test_compact_snapshot_when_start_in_range() -> None:
    """A message started in the stretch and still streaming becomes one snapshot."""
    out = compact(
        [
            ev(1, wire.MESSAGE_START, role="agent", run="r", text="He"),
            ev(2, wire.MESSAGE_DELTA, i=0, text="llo"),
            ev(3, wire.MESSAGE_DELTA, i=1, text=" world"),
        ]
    )
    assert out == [
        (
            3,
            {
                "v": 1,
                "type": wire.MESSAGE_SNAPSHOT,
                "message": "m",
                "role": "agent",
                "run": "r",
                "text": "Hello world",
                "status": "streaming",
                "i": 1,
            },
        )
    ]


def test_compact_snapshot_without_deltas() -> None:
    """A start with no deltas yet becomes an empty snapshot without an ``i``."""
    out = compact([ev(4, wire.MESSAGE_START, role="agent")])
    assert out == [
        (
            4,
            {
                "v": 1,
                "type": wire.MESSAGE_SNAPSHOT,
                "message": "m",
                "role": "agent",
                "text": "",
                "status": "streaming",
            },
        )
    ]


def test_compact_merges_deltas_of_message_started_before() -> None:
    """Deltas of a message started before the stretch merge into one delta with i/from_i."""
    out = compact(
        [
            ev(10, wire.MESSAGE_DELTA, i=4, text="a"),
            ev(11, wire.MESSAGE_DELTA, i=5, text="b"),
            ev(12, wire.MESSAGE_DELTA, i=6, text="c"),
        ]
    )
    assert out == [
        (
            12,
            {
                "v": 1,
                "type": wire.MESSAGE_DELTA,
                "message": "m",
                "text": "abc",
                "i": 6,
                "from_i": 4,
            },
        )
    ]


def test_compact_reset_in_range() -> None:
    """With a reset in the stretch, the merged item is a reset holding text from it onwards."""
    out = compact(
        [
            ev(1, wire.MESSAGE_DELTA, i=0, text="wrong "),
            ev(2, wire.MESSAGE_RESET, i=1, text="right "),
            ev(3, wire.MESSAGE_DELTA, i=2, text="answer"),
        ]
    )
    assert len(out) == 1
    seq, event = out[0]
    assert seq == 3
    assert event["type"] == wire.MESSAGE_RESET
    assert event["text"] == "right answer"
    assert event["i"] == 2


def test_compact_reset_after_start_is_a_snapshot() -> None:
    """A start, deltas, a reset and more deltas give a snapshot of the text since the reset."""
    out = compact(
        [
            ev(1, wire.MESSAGE_START, role="agent"),
            ev(2, wire.MESSAGE_DELTA, i=0, text="draft"),
            ev(3, wire.MESSAGE_RESET, i=1, text=""),
            ev(4, wire.MESSAGE_DELTA, i=2, text="final"),
        ]
    )
    assert [(seq, e["type"], e["text"]) for seq, e in out] == [(4, wire.MESSAGE_SNAPSHOT, "final")]


@pytest.mark.parametrize("final", [wire.MESSAGE_COMPLETE, wire.MESSAGE_EDIT, wire.MESSAGE_DELETE])
def test_compact_final_form_supersedes_stream(final: str) -> None:
    """A complete, edit or delete in the stretch replaces everything streamed before it."""
    fields = {} if final == wire.MESSAGE_DELETE else {"text": "all of it"}
    stretch = [
        ev(1, wire.MESSAGE_START, role="agent"),
        ev(2, wire.MESSAGE_DELTA, i=0, text="all "),
        ev(3, wire.MESSAGE_DELTA, i=1, text="of it"),
        ev(4, final, **fields),
    ]
    assert compact(stretch) == [(4, stretch[3].event)]
    # Same when the start was before the stretch.
    assert compact(stretch[1:]) == [(4, stretch[3].event)]


def test_compact_leaves_other_events_untouched() -> None:
    """User, run and unknown events (and agent events without a message) pass through as-is."""
    stretch = [
        ev(1, wire.RUN_STARTED, message=None, kind="r", run="r"),
        ev(2, wire.MESSAGE_CREATED, message="q", kind="u", text="hi"),
        ev(3, wire.MESSAGE_DELTA, message="u1", kind="u", text="user delta"),
        ev(4, "custom.thing", message="m", data=1),
        ev(5, wire.MESSAGE_DELTA, message=None, text="orphan"),
        ev(6, wire.RUN_PROGRESS, message=None, kind="r", run="r", pct=50),
        ev(7, wire.RUN_COMPLETED, message=None, kind="r", run="r"),
    ]
    assert compact(stretch) == [(s.seq, s.event) for s in stretch]
    assert compact([]) == []


def test_compact_interleaved_messages_keep_sequence_order() -> None:
    """Interleaved messages and runs come out in strictly increasing sequence order."""
    stretch = [
        ev(1, wire.RUN_STARTED, message=None, kind="r", run="r"),
        ev(2, wire.MESSAGE_START, message="a"),
        ev(3, wire.MESSAGE_DELTA, message="b", i=3, text="B"),
        ev(4, wire.MESSAGE_DELTA, message="a", i=0, text="A"),
        ev(5, wire.MESSAGE_CREATED, message="q", kind="u", text="?"),
        ev(6, wire.MESSAGE_DELTA, message="b", i=4, text="B"),
        ev(7, wire.MESSAGE_START, message="c"),
        ev(8, wire.MESSAGE_COMPLETE, message="c", text="C"),
    ]
    out = compact(stretch)
    assert [(seq, e["type"], e.get("message")) for seq, e in out] == [
        (1, wire.RUN_STARTED, None),
        (4, wire.MESSAGE_SNAPSHOT, "a"),
        (5, wire.MESSAGE_CREATED, "q"),
        (6, wire.MESSAGE_DELTA, "b"),
        (8, wire.MESSAGE_COMPLETE, "c"),
    ]
    assert out[3][1]["text"] == "BB" and (out[3][1]["from_i"], out[3][1]["i"]) == (3, 4)


def _apply(view: dict[str, str | None], event: dict[str, Any]) -> None:
    """What a device shows for one event (None marks a deleted message)."""
    kind, mid, text = event["type"], event.get("message"), event.get("text", "")
    if kind == wire.MESSAGE_START:
        view[mid] = text
    elif kind == wire.MESSAGE_DELTA:
        view[mid] = (view.get(mid) or "") + text
    elif kind == wire.MESSAGE_DELETE:
        view[mid] = None
    elif kind in (
        wire.MESSAGE_RESET,
        wire.MESSAGE_COMPLETE,
        wire.MESSAGE_EDIT,
        wire.MESSAGE_SNAPSHOT,
        wire.MESSAGE_CREATED,
    ):
        view[mid] = text


_WORD = st.text(alphabet="abc ", max_size=3)


@st.composite
def _stretches(draw: st.DrawFn) -> list[StoredEvent]:
    """Interleaved, well-formed event histories of a few agent messages plus run events."""
    per_message: list[list[tuple[str, dict[str, Any]]]] = []
    for name in ("m0", "m1", "m2")[: draw(st.integers(1, 3))]:
        ops: list[tuple[str, dict[str, Any]]] = []
        if draw(st.booleans()):
            ops.append((wire.MESSAGE_START, {"text": draw(_WORD), "role": "agent"}))
        i = draw(st.integers(0, 5))
        for op in draw(st.lists(st.sampled_from(["d", "d", "d", "r"]), max_size=8)):
            kind = wire.MESSAGE_DELTA if op == "d" else wire.MESSAGE_RESET
            ops.append((kind, {"i": i, "text": draw(_WORD)}))
            i += 1
        final = draw(st.sampled_from([None, wire.MESSAGE_COMPLETE, wire.MESSAGE_DELETE]))
        if final == wire.MESSAGE_COMPLETE:
            ops.append((final, {"text": draw(_WORD)}))
        elif final is not None:
            ops.append((final, {}))
        per_message.append([(kind, {"message": name, **f}) for kind, f in ops])
    merged: list[tuple[str, dict[str, Any]]] = []
    queues = [q for q in per_message if q]
    while queues:
        queue = queues[draw(st.integers(0, len(queues) - 1))]
        merged.append(queue.pop(0))
        queues = [q for q in queues if q]
        if draw(st.integers(0, 5)) == 0:
            merged.append((wire.RUN_PROGRESS, {"run": "r"}))
    seq = draw(st.integers(1, 1000))
    out = []
    for kind, fields in merged:
        seq += draw(st.integers(1, 3))
        stored_kind = "r" if kind.startswith("run.") else "a"
        out.append(StoredEvent(seq, stored_kind, "", {"v": 1, "type": kind, **fields}))
    return out


@settings(max_examples=300, deadline=None)
@given(_stretches())
def test_compact_preserves_what_a_device_sees(stretch: list[StoredEvent]) -> None:
    """Compacted or not, a stretch leaves a device with the same texts; sequences increase."""
    prior = {"m0": "P0", "m1": "P1", "m2": "P2"}  # what the device had before the stretch
    full: dict[str, str | None] = dict(prior)
    for stored in stretch:
        _apply(full, stored.event)
    out = compact(stretch)
    compacted: dict[str, str | None] = dict(prior)
    for _, event in out:
        _apply(compacted, event)
    assert compacted == full
    seqs = [seq for seq, _ in out]
    assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False))
    assert set(seqs) <= {s.seq for s in stretch}
    if stretch:
        assert seqs[-1] == stretch[-1].seq  # a device resuming from the last seq misses nothing
    assert len(out) <= len(stretch)
    runs = [e for _, e in out if e["type"] == wire.RUN_PROGRESS]
    assert len(runs) == sum(1 for s in stretch if s.event["type"] == wire.RUN_PROGRESS)


# ---- wire ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"{", b"[1, 2]", b'"text"', b"null", b"42", b"{}", b'{"type": 5}',
     b'{"type": null}', b"\xff\xfe\x00", b'{"type": "x"} trailing'],
)  # fmt: skip
def test_decode_event_returns_none_for_malformed_input(data: bytes) -> None:
    """decode_event returns None (never raises) for anything but an object with a string type."""
    assert wire.decode_event(data) is None


def test_decode_event_keeps_unknown_types() -> None:
    """A well-formed event of an unknown type is returned as it is (forward compatibility)."""
    assert wire.decode_event(b'{"type": "future.thing", "x": [1]}') == {
        "type": "future.thing",
        "x": [1],
    }


def test_parse_client_frame_errors() -> None:
    """Client frame parsing raises BadFrame with a precise message for each kind of mistake."""
    with pytest.raises(BadFrame, match=r"^frame is not valid JSON"):
        wire.parse_client_frame("{")
    with pytest.raises(BadFrame, match=r"^frame must be a JSON object, not list$"):
        wire.parse_client_frame("[]")
    with pytest.raises(BadFrame, match=r"^frame has no string 'type' field$"):
        wire.parse_client_frame("{}")
    assert wire.parse_client_frame(b'{"type": "ping"}') == {"type": "ping"}
    with pytest.raises(BadFrame, match=r"^field 'text' must be a string$"):
        wire.require_str({"text": 1}, "text")
    with pytest.raises(BadFrame, match=r"^field 'text' is longer than 3 characters$"):
        wire.require_str({"text": "abcd"}, "text", max_len=3)


def test_ws_close_reason_fits_a_control_frame() -> None:
    """A WebSocket close reason is at most 123 bytes and valid UTF-8, whatever the message."""
    for message in ("short", "x" * 500, "ü" * 300, "界" * 100, "a" + "😀" * 80):
        reason = close_reason(message)
        assert len(reason) <= 123
        assert message.startswith(reason.decode("utf-8"))
    assert close_reason("plain") == b"plain"
