"""Property-based tests: the frame parser and the room-id and username rules, for any input.

The parser and the validation models are checked in-process with many generated inputs; a
sample of the same inputs is then sent to one real server (module-scoped, so Hypothesis never
sees a function-scoped fixture of ours) to check that what reaches users agrees.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import Field, TypeAdapter, ValidationError
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from app.api.schemas import ROOM_PATTERN, USERNAME_PATTERN, Credentials
from app.chat.protocol import (
    ClientFrame,
    ClientMessage,
    ClientRead,
    ClientTyping,
    FrameError,
    parse_client_frame,
)
from app.core.config import Settings
from app.core.migrate import upgrade
from tests.helpers import PASSWORD, SECRET, LiveServer, join, register

# The error codes of docs/protocol.md that a text frame can earn (binary_unsupported and
# store_failed come from elsewhere than the parser).
PARSER_CODES = {
    "invalid_json",
    "invalid_frame",
    "unknown_type",
    "invalid_body",
    "empty_body",
    "body_too_long",
    "invalid_client_msg_id",
    "invalid_id",
}
ROOM_CHARS = string.ascii_letters + string.digits + "_.:-"
ROOM_MIN, ROOM_MAX = 1, 64
USERNAME_CHARS = string.ascii_letters + string.digits + "_.-"
USERNAME_MIN, USERNAME_MAX = 3, 32

# Valid JSON that Python's json refuses: nesting past the recursion limit (RecursionError),
# an integer of more than 4300 digits (ValueError). Both fit in a default 64 KiB frame.
DEEPLY_NESTED = '{"body":' + "[" * 60_000
HUGE_INTEGER = '{"type":"message","body":"x","n":' + "1" * 5000 + "}"

max_chars_st = st.integers(min_value=1, max_value=80)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


def parse(text: str, max_chars: int) -> ClientFrame | FrameError:
    """The parser's answer; any exception other than FrameError escapes and fails the test."""
    try:
        return parse_client_frame(text, max_chars=max_chars)
    except FrameError as exc:
        return exc


def is_text(value: str) -> bool:
    """Encodable as UTF-8, as everything stored or sent in a text frame must be."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def assert_well_formed(result: ClientFrame | FrameError, max_chars: int) -> None:
    if isinstance(result, FrameError):
        assert result.code in PARSER_CODES, result.code
        assert result.detail
    elif isinstance(result, ClientRead):
        assert isinstance(result.id, int) and result.id >= 1
    elif not isinstance(result, ClientTyping):
        assert result.body == result.body.strip()
        assert 1 <= len(result.body) <= max_chars
        assert result.client_msg_id is None or 1 <= len(result.client_msg_id) <= 64
        # What is accepted is stored and sent in text frames: it must be encodable text (JSON
        # escapes can spell lone surrogates, which are not).
        result.body.encode("utf-8")
        if result.client_msg_id is not None:
            result.client_msg_id.encode("utf-8")


# --- the frame parser -------------------------------------------------------------------


@given(text=st.text(), max_chars=max_chars_st)
@example(text="", max_chars=1)
@example(text=" \t\n ", max_chars=5)
@example(text="{", max_chars=5)
@example(text="[1, 2]", max_chars=5)
@example(text='{"type": "message", "body": "\\u0000"}', max_chars=5)
@example(text=DEEPLY_NESTED, max_chars=5)
@example(text=HUGE_INTEGER, max_chars=5)
def test_any_text_is_a_message_or_a_documented_error(text: str, max_chars: int) -> None:
    assert_well_formed(parse(text, max_chars), max_chars)


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


@given(
    text=st.text().filter(lambda t: not t.lstrip().startswith("{") and not is_json(t)),
    max_chars=max_chars_st,
)
@example(text="[draft] notes", max_chars=80)
@example(text="1" * 5000, max_chars=10_000)  # JSON, but beyond what Python reads as an int
def test_text_that_is_not_json_is_taken_whole_as_the_body(text: str, max_chars: int) -> None:
    result = parse(text, max_chars)
    expected = text.strip()
    if not expected:
        assert isinstance(result, FrameError) and result.code == "empty_body"
    elif len(expected) > max_chars:
        assert isinstance(result, FrameError) and result.code == "body_too_long"
    else:
        assert result == ClientMessage(body=expected)


@given(value=json_values, max_chars=max_chars_st)
def test_any_json_value_is_a_message_or_a_documented_error(value: Any, max_chars: int) -> None:
    text = json.dumps(value)
    result = parse(text, max_chars)
    assert_well_formed(result, max_chars)
    if not isinstance(value, dict):
        # JSON that is not an object: the client meant a frame, and it is no frame.
        assert isinstance(result, FrameError) and result.code == "invalid_frame"


@given(
    fields=st.dictionaries(st.text(max_size=12), json_values, max_size=5),
    max_chars=max_chars_st,
)
def test_any_json_object_is_a_message_or_a_documented_error(
    fields: dict[str, Any], max_chars: int
) -> None:
    result = parse(json.dumps(fields), max_chars)
    assert_well_formed(result, max_chars)
    if fields.get("type") not in {"message", "typing", "read"}:
        assert isinstance(result, FrameError) and result.code == "unknown_type"
    elif fields["type"] == "message" and not isinstance(fields.get("body"), str):
        assert isinstance(result, FrameError) and result.code == "invalid_body"


@given(
    body=st.text(),
    max_chars=max_chars_st,
    ascii_only=st.booleans(),
    extra=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in {"type", "body", "client_msg_id"}),
        json_values,
        max_size=3,
    ),
)
def test_json_message_frames_round_trip_the_trimmed_body(
    body: str, max_chars: int, ascii_only: bool, extra: dict[str, Any]
) -> None:
    text = json.dumps({"type": "message", "body": body, **extra}, ensure_ascii=ascii_only)
    result = parse(text, max_chars)
    expected = body.strip()
    if not expected:
        assert isinstance(result, FrameError) and result.code == "empty_body"
    elif len(expected) > max_chars:
        assert isinstance(result, FrameError) and result.code == "body_too_long"
    else:
        assert result == ClientMessage(body=expected)


@given(
    client_msg_id=json_values
    | st.text(min_size=60, max_size=70)
    | st.text(alphabet=st.characters(codec=None), min_size=1, max_size=64),
    body=st.text(min_size=1),
)
@example(client_msg_id="", body="hi")
@example(client_msg_id="x" * 64, body="hi")
@example(client_msg_id="x" * 65, body="hi")
@example(client_msg_id=" ", body="hi")
@example(client_msg_id="\ud800", body="hi")  # echoed to the whole room, so must be text
def test_client_msg_id_is_echoed_when_a_string_of_1_to_64_characters(
    client_msg_id: Any, body: str
) -> None:
    body = body.strip() or "hi"
    frame = {"type": "message", "body": body, "client_msg_id": client_msg_id}
    result = parse(json.dumps(frame), max_chars=10_000)
    if client_msg_id is None:  # null is as good as absent
        assert result == ClientMessage(body=body)
    elif (
        isinstance(client_msg_id, str) and 1 <= len(client_msg_id) <= 64 and is_text(client_msg_id)
    ):
        assert result == ClientMessage(body=body, client_msg_id=client_msg_id)
    else:
        assert isinstance(result, FrameError) and result.code == "invalid_client_msg_id"


@given(
    body=st.text(alphabet=st.characters(codec=None), min_size=1),
    max_chars=st.integers(min_value=1, max_value=10_000),
)
@example(body="x\ud800", max_chars=100)  # a lone surrogate, as a JSON escape: \\ud800
@example(body="\udfff", max_chars=100)
@example(body="\U0001f600", max_chars=100)  # a pair: \\ud83d\\ude00, one emoji
def test_a_json_escape_never_yields_a_body_that_cannot_be_stored_or_sent(
    body: str, max_chars: int
) -> None:
    """JSON may spell lone surrogates (\\ud800); such a body is no text a database or a
    WebSocket text frame can carry, so it must be refused at the door, not at the store."""
    assert_well_formed(parse(json.dumps({"type": "message", "body": body}), max_chars), max_chars)


@pytest.fixture
def unlimited_server(database_url: str) -> Iterator[LiveServer]:
    """A server without a per-user message rate limit, so bob can send in a burst."""
    live = LiveServer(Settings(database_url=database_url, secret_key=SECRET, rate_limit=0))
    yield live.start()
    live.stop()


async def test_a_lone_surrogate_costs_no_one_else_their_messages(
    unlimited_server: LiveServer,
) -> None:
    """Messages are stored in batches: one unstorable body must not fail its neighbours."""
    server = unlimited_server
    async with httpx.AsyncClient(base_url=server.url) as http:
        alice_token = await register(http, "alice")
        bob_token = await register(http, "bob")
    alice = await join(server, "surrogates", alice_token)
    bob = await join(server, "surrogates", bob_token)
    sent = [f"bob {i}" for i in range(200)]

    async def bob_talks() -> None:
        for body in sent:
            await bob.send(body)

    async def alice_sends_lone_surrogates() -> None:
        for _ in range(10):
            await asyncio.sleep(0.002)
            await alice.ws.send('{"type": "message", "body": "x\\ud800"}')

    await asyncio.gather(bob_talks(), alice_sends_lone_surrogates())
    acknowledged, errors = [], []
    while len(acknowledged) + len(errors) < len(sent):
        frame = await bob.recv()
        if frame["type"] == "message" and frame["user"] == "bob":
            acknowledged.append(frame["body"])
        elif frame["type"] == "error":
            errors.append(frame["code"])
    assert errors == [], f"bob's messages failed because of alice's: {errors[:3]}..."
    assert acknowledged == sent


@pytest.mark.parametrize("text", [DEEPLY_NESTED, HUGE_INTEGER], ids=["nested", "integer"])
async def test_json_python_cannot_parse_is_answered_and_the_socket_stays_open(
    server: LiveServer, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")  # where an escaping exception lands
    uvicorn_log.addHandler(caplog.handler)
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            token = await register(http, "alice")
        alice = await join(server, "r1", token)
        await alice.ws.send(text)
        error = await alice.recv_type("error")
        assert error["code"] == "invalid_json"
        await alice.send("still here")
        assert (await alice.recv_type("message"))["body"] == "still here"
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# --- room ids and usernames, in-process ------------------------------------------------------

# How FastAPI checks a path parameter declared with a pattern (RoomId) and a model field.
room_adapter: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(pattern=ROOM_PATTERN)])
username_adapter: TypeAdapter[str] = TypeAdapter(Annotated[str, Field(pattern=USERNAME_PATTERN)])


def room_is_valid(room: str) -> bool:
    return ROOM_MIN <= len(room) <= ROOM_MAX and all(c in ROOM_CHARS for c in room)


def username_is_valid(name: str) -> bool:
    return USERNAME_MIN <= len(name) <= USERNAME_MAX and all(c in USERNAME_CHARS for c in name)


def passes(adapter: TypeAdapter[str], value: str) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def accepted_room(room: str) -> bool:
    by_path = passes(room_adapter, room)
    # The /chat?room= form checks with re.fullmatch; it must agree with the route.
    assert by_path == bool(re.fullmatch(ROOM_PATTERN, room)), room
    return by_path


def accepted_username(name: str) -> bool:
    try:
        Credentials(username=name, password=PASSWORD)
    except ValidationError:
        by_model = False
    else:
        by_model = True
    assert by_model == passes(username_adapter, name), name
    return by_model


def valid_ids(chars: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=chars, min_size=low, max_size=high)


def invalid_ids(chars: str, low: int, high: int) -> st.SearchStrategy[str]:
    """A forbidden character anywhere, or only allowed ones but too few or too many."""
    outsider = st.characters().filter(lambda c: c not in chars)
    with_outsider = st.tuples(
        st.text(alphabet=chars, max_size=high), outsider, st.text(alphabet=chars, max_size=high)
    ).map("".join)
    too_short = st.text(alphabet=chars, max_size=low - 1)
    too_long = st.text(alphabet=chars, min_size=high + 1, max_size=high + 40)
    return with_outsider | too_short | too_long


valid_rooms = valid_ids(ROOM_CHARS, ROOM_MIN, ROOM_MAX)
invalid_rooms = invalid_ids(ROOM_CHARS, ROOM_MIN, ROOM_MAX)
valid_usernames = valid_ids(USERNAME_CHARS, USERNAME_MIN, USERNAME_MAX)
invalid_usernames = invalid_ids(USERNAME_CHARS, USERNAME_MIN, USERNAME_MAX)


@given(room=valid_rooms)
@example(room="a")
@example(room="." * 64)
def test_valid_room_ids_are_accepted(room: str) -> None:
    assert accepted_room(room)


@given(room=invalid_rooms)
@example(room="")
@example(room="ticket-42\n")
@example(room="ticket 42")
@example(room="ticket/42")
@example(room="é")
@example(room="a" * 65)
def test_invalid_room_ids_are_rejected(room: str) -> None:
    assert not room_is_valid(room)
    assert not accepted_room(room)


@given(room=st.text(max_size=70))
def test_any_room_id_is_accepted_exactly_when_the_documented_rule_allows(room: str) -> None:
    assert accepted_room(room) == room_is_valid(room)


@given(name=valid_usernames)
def test_valid_usernames_are_accepted(name: str) -> None:
    assert accepted_username(name)


@given(name=invalid_usernames)
@example(name="al")
@example(name="alice\n")
@example(name="al ice")
@example(name="al:ice")  # allowed in room ids, not in usernames
@example(name="a" * 33)
def test_invalid_usernames_are_rejected(name: str) -> None:
    assert not username_is_valid(name)
    assert not accepted_username(name)


@given(name=st.text(max_size=40))
def test_any_username_is_accepted_exactly_when_the_documented_rule_allows(name: str) -> None:
    assert accepted_username(name) == username_is_valid(name)


# --- the same rules over real sockets, for a sample -----------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    """One server for the whole module, and a bearer token for it."""
    path: Path = tmp_path_factory.mktemp("properties") / "chat.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    server = LiveServer(Settings(database_url=url, secret_key=SECRET)).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            response = client.post(
                "/auth/register", json={"username": "prop-user", "password": PASSWORD}
            )
            assert response.status_code == 201, response.text
            response = client.post(
                "/auth/token", data={"username": "prop-user", "password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            yield server, response.json()["access_token"]
    finally:
        server.stop()


def path_segment(room: str) -> str:
    """The room as one URL path segment ("." and ".." escaped, or clients fold them away)."""
    return quote(room, safe="").replace(".", "%2E")


# Only the module-scoped `live` fixture feeds data to these tests; the function-scoped fixture
# Hypothesis sees is conftest's autouse socket cleanup, which has nothing to do here.
over_sockets = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@over_sockets
@given(room=valid_rooms | invalid_rooms)
@example(room="..")
@example(room="a:b.c_d-e")
@example(room="a/b")
@example(room="a?b")
@example(room="")
def test_a_room_socket_opens_exactly_for_valid_room_ids(
    live: tuple[LiveServer, str], room: str
) -> None:
    server, token = live
    url = f"{server.ws_url}/items/{path_segment(room)}/ws?token={token}"
    if room_is_valid(room):
        with ws_connect(url, open_timeout=5) as ws:
            welcome = json.loads(ws.recv(timeout=5))
            assert welcome["type"] == "welcome"
            assert welcome["room"] == room
            history = json.loads(ws.recv(timeout=5))
            assert history["type"] == "history"
            assert history["room"] == room
    else:
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, open_timeout=5)
        assert refused.value.response.status_code in {403, 404}


@over_sockets
@given(room=valid_rooms | invalid_rooms)
def test_room_history_answers_exactly_for_valid_room_ids(
    live: tuple[LiveServer, str], room: str
) -> None:
    server, token = live
    response = httpx.get(
        f"{server.url}/items/{path_segment(room)}/messages",
        headers={"Authorization": f"Bearer {token}"},
    )
    if room_is_valid(room):
        assert response.status_code == 200, response.text
        assert response.json()["room"] == room
    else:
        assert response.status_code in {404, 422}, response.text


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=valid_usernames | invalid_usernames)
@example(name="alice\n")
def test_registration_accepts_exactly_the_valid_usernames(
    live: tuple[LiveServer, str], name: str
) -> None:
    server, _ = live
    response = httpx.post(
        f"{server.url}/auth/register", json={"username": name, "password": PASSWORD}
    )
    if username_is_valid(name):
        # 409: Hypothesis replays a name it already registered; it passed validation before.
        assert response.status_code in {201, 409}, response.text
    else:
        assert response.status_code == 422, response.text
