"""Tokens minted by a host application: HS256 with the shared secret, or RS256 / ES256 with
the host's own key; the account of a new `sub` made on first use. Real sockets and REST."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jose import jwt
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.core.config import Settings, sqlite_file
from tests.helpers import PASSWORD, SECRET, LiveServer, connect, free_port, join
from tests.test_cli import run

LATER = int(time.time()) + 3600


class HostKey:
    """A host's key pair, made in the test: the private PEM signs, the public PEM verifies."""

    def __init__(self, algorithm: str, key_size: int = 2048, curve: str = "P-256") -> None:
        self.algorithm = algorithm
        self.private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if algorithm == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        else:
            self.private = ec.generate_private_key(
                ec.SECP384R1() if curve == "P-384" else ec.SECP256R1()
            )
        self.private_pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.public_pem = (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def mint(self, sub: object, algorithm: str | None = None, **claims: object) -> str:
        token: str = jwt.encode(
            {"sub": sub, "exp": LATER, **claims},
            self.private_pem,
            algorithm=algorithm or self.algorithm,
        )
        return token


KEYS = {name: HostKey(name) for name in ("RS256", "ES256")}


def shared(sub: object, **claims: object) -> str:
    """A host's token signed with the shared secret (CHATROOM_SECRET_KEY)."""
    token: str = jwt.encode({"sub": sub, "exp": LATER, **claims}, SECRET, algorithm="HS256")
    return token


def _segment(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def hand_signed(algorithm: str, sign: Callable[[bytes], bytes]) -> str:
    """A token for mallory signed by hand, as python-jose would refuse to sign it."""
    claims = {"sub": "mallory", "exp": LATER}
    signing_input = f"{_segment({'alg': algorithm, 'typ': 'JWT'})}.{_segment(claims)}"
    signature = sign(signing_input.encode())
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def with_another_algorithm(key: HostKey) -> str:
    """Signed by the host's own key, with another algorithm than the key's one."""
    if isinstance(key.private, rsa.RSAPrivateKey):
        return key.mint("mallory", algorithm="RS512")

    def es384(data: bytes) -> bytes:  # ES384 with a P-256 key
        assert isinstance(key.private, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.private.sign(data, ec.ECDSA(hashes.SHA384())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return hand_signed("ES384", es384)


def usernames(settings: Settings) -> list[str]:
    path = sqlite_file(settings.database_url)
    assert path is not None
    with sqlite3.connect(path) as db:
        return [name for (name,) in db.execute("SELECT username FROM users ORDER BY id")]


async def opens(server: LiveServer, token: str, user: str, room: str = "r1") -> None:
    """The token opens REST and the room's socket, as user."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        rooms = await http.get("/rooms", headers={"Authorization": f"Bearer {token}"})
    assert rooms.status_code == 200, rooms.text
    welcome, _ = await (await connect(server, room, token)).join()
    assert welcome["user"] == user


async def is_refused(server: LiveServer, token: str) -> None:
    """401 over REST, 1008 at the socket's handshake (HTTP 403)."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        rooms = await http.get("/rooms", headers={"Authorization": f"Bearer {token}"})
    assert rooms.status_code == 401
    with pytest.raises(InvalidStatus) as refused:
        await connect(server, "r1", token)
    assert refused.value.response.status_code == 403


@pytest.fixture
def host_server(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    """A server that trusts the public key KEYS[param]: an RSA key given as the PEM text, an
    EC key as a file."""
    key = KEYS[request.param]
    if key.algorithm == "RS256":
        update: dict[str, object] = {"jwt_public_key": key.public_pem}
    else:
        (tmp_path / "host.pub").write_text(key.public_pem)
        update = {"jwt_public_key_file": tmp_path / "host.pub"}
    live = LiveServer(settings.model_copy(update=update)).start()
    yield live
    live.stop()


async def test_a_shared_key_token_for_a_new_user_makes_the_account_on_first_use(
    server: LiveServer, http: httpx.AsyncClient, settings: Settings
) -> None:
    token = shared("newbie", name="New Bie", rooms=["ticket-1"], moderator=["ticket-1"])
    await opens(server, token, "newbie", room="ticket-1")
    assert usernames(settings) == ["newbie"]
    client = await join(server, "ticket-1", token)
    await client.send("hello from the host's user")
    message = await client.recv_type("message")
    assert (message["user"], message["body"]) == ("newbie", "hello from the host's user")
    # rooms is a permission, as in chatroom's own tokens.
    with pytest.raises(InvalidStatus):
        await connect(server, "ticket-2", token)
    # No password opens the account on the login page or /auth/token, and its name is taken.
    for password in ("", PASSWORD):
        page = await http.post("/login", data={"username": "newbie", "password": password})
        assert page.status_code == 401
    login = await http.post("/auth/token", data={"username": "newbie", "password": PASSWORD})
    assert login.status_code == 401
    taken = await http.post("/auth/register", json={"username": "newbie", "password": PASSWORD})
    assert taken.status_code == 409
    # The account known, the next token opens it as well, and makes no other.
    await opens(server, shared("newbie"), "newbie")
    assert usernames(settings) == ["newbie"]


async def test_the_name_claim_is_shown_with_each_message_sent_under_it(
    server: LiveServer, http: httpx.AsyncClient
) -> None:
    named = shared("hana", name="Hana Ito")
    client = await join(server, "ticket-1", named)
    await client.send("over the socket")
    assert (await client.recv_type("message"))["name"] == "Hana Ito"
    posted = await http.post(
        "/items/ticket-1/messages",
        json={"body": "over REST"},
        headers={"Authorization": f"Bearer {shared('hana', name='Hana I.')}"},
    )
    assert posted.status_code == 201 and posted.json()["name"] == "Hana I.", posted.text
    await client.recv_type("message")
    # Without the claim, none: each message keeps the name it was sent under.
    plain = await join(server, "ticket-1", shared("hana"))
    await plain.send("no name given")
    assert "name" not in await plain.recv_type("message")
    page = await http.get(
        "/items/ticket-1/messages", headers={"Authorization": f"Bearer {shared('hana')}"}
    )
    expected = [("Hana Ito", "over the socket"), ("Hana I.", "over REST"), (None, "no name given")]
    assert [(m.get("name"), m["body"]) for m in page.json()["messages"]] == expected
    _, replay = await (await connect(server, "ticket-1", shared("hana"))).join()
    assert [(m.get("name"), m["body"]) for m in replay["messages"]] == expected


@pytest.mark.parametrize("host_server", sorted(KEYS), indirect=True)
async def test_a_token_signed_with_the_hosts_key_opens_socket_and_rest(
    host_server: LiveServer, server: LiveServer, settings: Settings, request: pytest.FixtureRequest
) -> None:
    key = KEYS[request.node.callspec.params["host_server"]]
    token = key.mint("carol", name="Carol", moderator="*")
    await opens(host_server, token, "carol")
    assert usernames(settings) == ["carol"]
    # chatroom's own HS256 tokens, and a host's with the shared secret, open it as ever.
    await opens(host_server, shared("dave"), "dave")
    # The same token where no public key is set (same database): refused.
    await is_refused(server, token)


OTHER_KEYS = {name: HostKey(name) for name in KEYS}
BAD_HOST_TOKENS = {
    "HS256 signed with the public PEM": lambda key: hand_signed(
        "HS256", lambda data: hmac.new(key.public_pem.encode(), data, hashlib.sha256).digest()
    ),
    "alg none": lambda key: hand_signed("none", lambda data: b""),
    "signed by another key": lambda key: OTHER_KEYS[key.algorithm].mint("mallory"),
    "signed by the right key with another algorithm": with_another_algorithm,
    "the other kind of key": lambda key: OTHER_KEYS[
        "ES256" if key.algorithm == "RS256" else "RS256"
    ].mint("mallory"),
    "expired": lambda key: key.mint("mallory", exp=int(time.time()) - 60),
    "HS256 with another secret": lambda key: jwt.encode(
        {"sub": "mallory", "exp": LATER}, "not-" + SECRET, algorithm="HS256"
    ),
    "a sub that is not a username": lambda key: key.mint("mallory!"),
}


@pytest.mark.parametrize("kind", sorted(BAD_HOST_TOKENS))
@pytest.mark.parametrize("host_server", sorted(KEYS), indirect=True)
async def test_forged_expired_or_confused_host_tokens_are_refused_and_make_no_account(
    host_server: LiveServer, settings: Settings, request: pytest.FixtureRequest, kind: str
) -> None:
    key = KEYS[request.node.callspec.params["host_server"]]
    # The host's well-formed token opens, so the refusal below is the bad token's.
    await opens(host_server, key.mint("carol"), "carol")
    await is_refused(host_server, BAD_HOST_TOKENS[kind](key))
    assert usernames(settings) == ["carol"]


@pytest.mark.parametrize(
    "sub", ["ab", "a" * 33, "has space", "alice\n", "élodie", "", 42, None, ["alice"]], ids=repr
)
async def test_a_sub_that_is_not_a_username_is_refused_and_never_created(
    server: LiveServer, settings: Settings, sub: object
) -> None:
    await opens(server, shared("valid_sub"), "valid_sub")
    await is_refused(server, shared(sub))
    assert usernames(settings) == ["valid_sub"]


GOOD_CLAIMS: dict[str, dict[str, object]] = {
    "moderator everywhere": {"moderator": "*"},
    "moderator of two items": {"moderator": ["ticket-1", "doc:9"]},
    "moderator of none": {"moderator": []},
    "a display name": {"name": "Hana Ōta"},
}
BAD_CLAIMS: dict[str, dict[str, object]] = {
    "moderator a number": {"moderator": 5},
    "moderator one id, not a list": {"moderator": "ticket-1"},
    "moderator a list of numbers": {"moderator": [1]},
    "name empty": {"name": ""},
    "name too long": {"name": "x" * 65},
    "name a number": {"name": 7},
    "name with a newline": {"name": "Hana\nŌta"},
    "an audience": {"aud": "chatroom"},  # chatroom has none to match
}


@pytest.mark.parametrize("claims", GOOD_CLAIMS.values(), ids=GOOD_CLAIMS.keys())
async def test_moderator_and_name_claims_are_taken(
    server: LiveServer, claims: dict[str, object]
) -> None:
    await opens(server, shared("hana", **claims), "hana")


@pytest.mark.parametrize("claims", BAD_CLAIMS.values(), ids=BAD_CLAIMS.keys())
async def test_malformed_claims_and_an_audience_are_refused(
    server: LiveServer, settings: Settings, claims: dict[str, object]
) -> None:
    await opens(server, shared("hana"), "hana")
    await is_refused(server, shared("mallory", **claims))
    assert usernames(settings) == ["hana"]


async def test_a_deleted_accounts_sub_is_refused_and_the_account_stays_deleted(
    server: LiveServer, http: httpx.AsyncClient, settings: Settings
) -> None:
    await opens(server, shared("dora"), "dora")
    socket = await join(server, "r1", shared("dora"))
    env = {
        **os.environ,
        "CHATROOM_DATABASE_URL": settings.database_url,
        "CHATROOM_SECRET_KEY": SECRET,
    }
    deleted = await asyncio.to_thread(run, env, "delete-user", "dora")
    assert deleted.returncode == 0, deleted.stderr
    with pytest.raises(ConnectionClosed) as closed:  # the server has learnt of it
        while True:
            await socket.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.reason == "account deleted"
    # A token the host mints after the deletion reopens nothing and makes no new account.
    await is_refused(server, shared("dora", iat=time.time()))
    assert usernames(settings) == ["dora"]
    assert run(env, "token", "dora").returncode == 1  # "no user": still deleted
    taken = await http.post("/auth/register", json={"username": "dora", "password": PASSWORD})
    assert taken.status_code == 409


async def test_racing_first_handshakes_for_one_new_user_all_succeed(
    server: LiveServer, settings: Settings
) -> None:
    other = LiveServer(settings).start()  # a second worker on the same database
    token = shared("racer")
    try:
        async with httpx.AsyncClient() as http:
            sockets, answers = await asyncio.gather(
                asyncio.gather(*(connect(s, "r1", token) for s in (server, other) * 4)),
                asyncio.gather(
                    *(
                        http.get(f"{s.url}/rooms", headers={"Authorization": f"Bearer {token}"})
                        for s in (server, other) * 4
                    )
                ),
            )
        assert [answer.status_code for answer in answers] == [200] * 8
        for socket in sockets:
            welcome, _ = await socket.join()
            assert welcome["user"] == "racer"
    finally:
        other.stop()
    assert usernames(settings) == ["racer"]


BAD_KEY_SETTINGS = {
    "not a key": (
        {"CHATROOM_JWT_PUBLIC_KEY": "not a key"},
        "CHATROOM_JWT_PUBLIC_KEY is not a PEM RSA or P-256 EC public key",
    ),
    "a private key": (
        {"CHATROOM_JWT_PUBLIC_KEY": KEYS["RS256"].private_pem},
        "CHATROOM_JWT_PUBLIC_KEY is a private key: give chatroom the public key only",
    ),
    "a short RSA key": (
        {"CHATROOM_JWT_PUBLIC_KEY": HostKey("RS256", key_size=1024).public_pem},
        "CHATROOM_JWT_PUBLIC_KEY is an RSA key shorter than 2048 bits",
    ),
    "an EC key on P-384": (
        {"CHATROOM_JWT_PUBLIC_KEY": HostKey("ES256", curve="P-384").public_pem},
        "CHATROOM_JWT_PUBLIC_KEY is an EC key on P-384: ES256 needs P-256",
    ),
    "a missing file": (
        {"CHATROOM_JWT_PUBLIC_KEY_FILE": "/nonexistent/host.pub"},
        "CHATROOM_JWT_PUBLIC_KEY_FILE (/nonexistent/host.pub) cannot be read: [Errno 2] "
        "No such file or directory: '/nonexistent/host.pub'",
    ),
    "both settings": (
        {
            "CHATROOM_JWT_PUBLIC_KEY": KEYS["RS256"].public_pem,
            "CHATROOM_JWT_PUBLIC_KEY_FILE": "/nonexistent/host.pub",
        },
        "set CHATROOM_JWT_PUBLIC_KEY or CHATROOM_JWT_PUBLIC_KEY_FILE, not both",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_KEY_SETTINGS))
def test_a_bad_public_key_stops_the_start_in_one_line(tmp_path: Path, case: str) -> None:
    variables, message = BAD_KEY_SETTINGS[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATROOM_")}
    result = run({**env, **variables}, "serve", "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"chatroom: {message}"]
    assert list(tmp_path.iterdir()) == [], "the server started, or made a database"
