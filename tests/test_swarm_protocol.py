"""The swarm protocol of PROTOCOL.md Part 1, end to end against gunicorn's gevent worker."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
import requests

from tests.support import SSE, Pair, Peer, Server

HEX32 = re.compile(r"[0-9a-f]{32}")


def connect_frame(peer: Peer) -> bytes:
    return (
        f'event: connect\ndata: {{"id":"{peer.id}","cid":"{peer.cid}","token":"{peer.token}"}}\n\n'
    ).encode()


# -- create and join -------------------------------------------------------------------


def test_create_sends_connect_first_byte_exact(hub: Server) -> None:
    with SSE.open(hub.url) as sse:
        assert sse.status == 200
        assert sse.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert sse.headers["cache-control"] == "no-cache"
        assert sse.headers["x-accel-buffering"] == "no"
        event = sse.next()
        data = event.json()
        assert list(data) == ["id", "cid", "token"]
        assert all(HEX32.fullmatch(v) for v in data.values())
        assert len(set(data.values())) == 3
        assert (
            bytes(sse.raw)
            == (
                f'event: connect\ndata: {{"id":"{data["id"]}","cid":"{data["cid"]}",'
                f'"token":"{data["token"]}"}}\n\n'
            ).encode()
        )


@pytest.mark.parametrize("path", ["", "/"])
def test_create_with_and_without_trailing_slash_no_redirect(hub: Server, path: str) -> None:
    with SSE.open(hub.origin + "/signal" + path) as sse:
        assert sse.status == 200
        assert sse.next().event == "connect"


def test_join_byte_exact_and_join_frame_to_initiator(hub: Server) -> None:
    initiator = Peer.open(hub.url)
    peer = Peer.open(f"{hub.url}/{initiator.id}")
    try:
        assert peer.id == initiator.id
        assert peer.cid != initiator.cid and peer.token != initiator.token
        assert bytes(peer.sse.raw) == connect_frame(peer)
        join = initiator.sse.next()
        assert join.event == "join" and join.json() == {"id": initiator.id, "cid": peer.cid}
        assert (
            bytes(initiator.sse.raw)
            == connect_frame(initiator)
            + (f'event: join\ndata: {{"id":"{initiator.id}","cid":"{peer.cid}"}}\n\n').encode()
        )
        assert peer.sse.quiet(0.2) == []  # only the initiator hears of joins
    finally:
        peer.close()
        initiator.close()


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "text/*",
        "text/event-stream",
        "text/html, text/event-stream;q=0.5",
        "application/json, */*",
    ],
)
def test_accept_admits(hub: Server, accept: str | None) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    with SSE.open(hub.url, headers=headers) as sse:
        assert sse.status == 200
        assert sse.next().event == "connect"


@pytest.mark.parametrize(
    "accept",
    ["text/html", "application/json", "text/event-stream;q=0", "text/*;q=0, application/json"],
)
def test_accept_excluding_event_stream_is_406(hub: Server, accept: str) -> None:
    response = requests.get(hub.url, headers={"Accept": accept}, timeout=5)
    assert response.status_code == 406
    assert "error" in response.json()
    initiator = Peer.open(hub.url)
    try:
        joined = requests.get(f"{hub.url}/{initiator.id}", headers={"Accept": accept}, timeout=5)
        assert joined.status_code == 406
        assert initiator.sse.quiet(0.2) == []  # nobody joined
    finally:
        initiator.close()


@pytest.mark.parametrize(
    "path",
    [
        "/ffffffffffffffffffffffffffffffff",
        "/No-Such",
        "/a/b",
        "/constructor",
        "/__proto__",
        "/hasOwnProperty",
        "/channels/x/y",
        "/%20",
    ],
)
def test_unknown_paths_are_404_json(hub: Server, path: str) -> None:
    for method in ("GET", "POST"):
        response = requests.request(
            method, hub.url + path, timeout=5, json={"token": "x", "data": 1}
        )
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]


def test_methods_other_than_get_post_are_405(hub: Server) -> None:
    initiator = Peer.open(hub.url)
    try:
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
            response = requests.request(method, f"{hub.url}/{initiator.id}", timeout=5)
            assert response.status_code == 405, method
            assert "POST" in response.headers["Allow"]
            assert response.json()["error"]
        assert requests.put(hub.url, timeout=5).status_code == 405
        post_base = requests.post(hub.url, json={"token": initiator.token, "data": 1}, timeout=5)
        assert post_base.status_code == 404  # POST names no swarm
    finally:
        initiator.close()


# -- POST: the status table, in order --------------------------------------------------


@pytest.fixture
def pair(hub: Server):  # type: ignore[no-untyped-def]
    initiator = Peer.open(hub.url)
    peer = Peer.open(f"{hub.url}/{initiator.id}")
    initiator.sse.next()  # join
    yield initiator, peer
    peer.close()
    initiator.close()


def post(hub: Server, swarm_id: str, **kw) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(f"{hub.url}/{swarm_id}", timeout=5, **kw)


def test_status_table(hub: Server, pair: tuple[Peer, Peer]) -> None:
    initiator, peer = pair
    sid, token = initiator.id, initiator.token
    big = "x" * (10 * 1024 + 1)
    cases = [
        # no such swarm, even with a body that is too large and of the wrong type
        ({"data": big, "headers": {"Content-Type": "text/plain"}}, "f" * 32, 404),
        # no such swarm, whatever else is wrong with the body, or nothing
        *(
            (kwargs, "f" * 32, 404)
            for kwargs in (
                {"data": b"token=bad&data=1", "headers": {"Content-Type": "text/plain"}},
                {"data": b"{nope", "headers": {"Content-Type": "application/json"}},
                {"json": {"data": 1}},
                {"json": {"token": "bad", "data": 1}},
                {"json": {"token": token}},
                {"json": {"token": token, "data": 1, "cid": "constructor"}},
                {"json": {"token": token, "data": 1, "cid": "0" * 32}},
                {"json": {"token": token, "data": 1}},
            )
        ),
        # too large, even with the wrong type
        ({"data": big, "headers": {"Content-Type": "text/plain"}}, sid, 413),
        # wrong or missing Content-Type, even with a bad token
        ({"data": b"token=bad&data=1", "headers": {"Content-Type": "text/plain"}}, sid, 415),
        ({"data": b"token=bad&data=1", "headers": {"Content-Type": ""}}, sid, 415),
        # unparseable body, before the token is looked at
        ({"data": b"{nope", "headers": {"Content-Type": "application/json"}}, sid, 400),
        ({"data": b"[1,2]", "headers": {"Content-Type": "application/json"}}, sid, 400),
        # token missing or wrong, even with data missing
        ({"json": {"data": 1}}, sid, 401),
        ({"json": {"token": "bad"}}, sid, 401),
        ({"json": {"token": 12, "data": 1}}, sid, 401),
        # data missing or null, even with an unknown cid
        ({"json": {"token": token, "cid": "nobody"}}, sid, 400),
        ({"json": {"token": token, "data": None}}, sid, 400),
        # cid not a peer of this swarm
        ({"json": {"token": token, "data": 1, "cid": "0" * 32}}, sid, 404),
        ({"json": {"token": token, "data": 1, "cid": "constructor"}}, sid, 404),
        # delivered
        ({"json": {"token": token, "data": {"boom": "boom"}}}, sid, 200),
    ]
    for kwargs, target, status in cases:
        response = post(hub, target, **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        body = response.json()
        assert body == {"ok": True} if status == 200 else set(body) == {"error"}
    # Only the one delivered signal reached the streams: rejected POSTs touch nothing.
    for who in (initiator, peer):
        event = who.sse.next()
        assert (event.event, event.json()) == ("signal", {"boom": "boom"})
        assert who.sse.quiet(0.2) == []


def test_token_of_another_swarm_is_401(hub: Server, pair: tuple[Peer, Peer]) -> None:
    initiator, _ = pair
    other = Peer.open(hub.url)
    try:
        response = post(hub, initiator.id, json={"token": other.token, "data": 1})
        assert response.status_code == 401
    finally:
        other.close()


@pytest.mark.parametrize("value", [0, False, "", [], {}])
def test_falsy_data_is_delivered(hub: Server, pair: tuple[Peer, Peer], value: object) -> None:
    initiator, peer = pair
    assert post(hub, initiator.id, json={"token": peer.token, "data": value}).status_code == 200
    event = initiator.sse.next()
    assert event.event == "signal" and event.json() == value


def test_chunked_body_over_limit_is_413(hub: Server, pair: tuple[Peer, Peer]) -> None:
    initiator, _ = pair

    def body():  # type: ignore[no-untyped-def]
        yield b'{"token":"' + initiator.token.encode() + b'","data":"'
        for _ in range(12):
            yield b"x" * 1024
        yield b'"}'

    response = post(hub, initiator.id, data=body(), headers={"Content-Type": "application/json"})
    assert "Content-Length" not in response.request.headers
    assert response.status_code == 413
    assert initiator.sse.quiet(0.2) == []

    def small():  # type: ignore[no-untyped-def]
        yield b'{"token":"' + initiator.token.encode() + b'",'
        yield b'"data":"chunked"}'

    ok = post(hub, initiator.id, data=small(), headers={"Content-Type": "application/json"})
    assert ok.status_code == 200
    assert initiator.sse.next().json() == "chunked"


def test_body_exactly_at_limit_is_accepted(hub: Server, pair: tuple[Peer, Peer]) -> None:
    initiator, _ = pair
    skeleton = json.dumps({"token": initiator.token, "data": ""}, separators=(",", ":"))
    data = "y" * (10 * 1024 - len(skeleton))
    body = json.dumps({"token": initiator.token, "data": data}, separators=(",", ":"))
    assert len(body) == 10 * 1024
    response = post(hub, initiator.id, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert initiator.sse.next().json() == data


# -- forms -----------------------------------------------------------------------------


def form(hub: Server, peer: Peer, body: str) -> requests.Response:
    return post(
        hub,
        peer.id,
        data=f"token={peer.token}&{body}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("data[x]=555&data[y][z]=1", b'{"x":"555","y":{"z":"1"}}'),
        ("data=hello+world", b'"hello world"'),
        ("data[]=a&data[]=b", b'["a","b"]'),
        ("data[1]=b&data[0]=a", b'["a","b"]'),
        ("data[greeting]=hello%20%C3%A9", '{"greeting":"hello é"}'.encode()),
        ("data[a][b][c][d][e][f][g]=deep", b'{"a":{"b":{"c":{"d":{"e":{"[f][g]":"deep"}}}}}}'),
    ],
)
def test_form_bracket_nesting(
    hub: Server, pair: tuple[Peer, Peer], body: str, expected: bytes
) -> None:
    initiator, _ = pair
    assert form(hub, initiator, body).status_code == 200
    initiator.sse.next()
    assert bytes(initiator.sse.raw).endswith(b"event: signal\ndata: " + expected + b"\n\n")


def test_form_bounds(hub: Server, pair: tuple[Peer, Peer]) -> None:
    initiator, _ = pair
    many = "&".join(["x=1"] * 1000) + "&data=1"
    response = form(hub, initiator, many)  # 1002 parameters with the token
    assert response.status_code == 400
    assert "too many" in response.json()["error"]
    conflict = form(hub, initiator, "data=1&data[x]=2")
    assert conflict.status_code == 400
    assert form(hub, initiator, "cid=&data=1").status_code == 200  # empty cid: broadcast
    assert initiator.sse.next().json() == "1"


# -- delivery --------------------------------------------------------------------------


def test_direct_and_broadcast(hub: Server) -> None:
    """koa-signal's suite: direct reaches its cid only, broadcast everyone, sender too."""
    initiator = Peer.open(hub.url)
    peers = [Peer.open(f"{hub.url}/{initiator.id}") for _ in range(3)]
    try:
        initiator.sse.events(3)  # joins
        a, b, c = peers
        assert a.post(hub.url, {"to": "b"}, cid=b.cid).status_code == 200
        assert b.sse.next().json() == {"to": "b"}
        for other in (initiator, a, c):
            assert other.sse.quiet(0.1) == []
        assert b.post(hub.url, {"all": 1}).status_code == 200
        for who in (initiator, *peers):
            event = who.sse.next()
            assert (event.event, event.json()) == ("signal", {"all": 1})
        assert a.post(hub.url, "to-initiator", cid=initiator.cid).status_code == 200
        assert initiator.sse.next().json() == "to-initiator"
    finally:
        for p in (*peers, initiator):
            p.close()


def test_join_and_leave_seen_by_initiator_only(hub: Server) -> None:
    initiator = Peer.open(hub.url)
    try:
        for _ in range(3):
            peer = Peer.open(f"{hub.url}/{initiator.id}")
            join = initiator.sse.next()
            assert (join.event, join.json()) == ("join", {"id": initiator.id, "cid": peer.cid})
            peer.close()
            leave = initiator.sse.next(timeout=2)
            assert (leave.event, leave.json()) == ("leave", {"id": initiator.id, "cid": peer.cid})
            assert bytes(initiator.sse.raw).endswith(
                f'event: leave\ndata: {{"id":"{initiator.id}","cid":"{peer.cid}"}}\n\n'.encode()
            )
    finally:
        initiator.close()


def test_leave_within_one_second_with_pings_at_15s(hub: Server) -> None:
    initiator = Peer.open(hub.url)
    peer = Peer.open(f"{hub.url}/{initiator.id}")
    try:
        initiator.sse.next()
        time.sleep(0.2)
        closed_at = time.monotonic()
        peer.close()
        leave = initiator.sse.next(timeout=1.0)
        assert leave.event == "leave" and leave.json()["cid"] == peer.cid
        assert time.monotonic() - closed_at < 1.0
        # Its token stopped working with it.
        assert peer.post(hub.url, "late").status_code == 401
    finally:
        initiator.close()


def test_signal_to_a_cid_that_left_is_404(hub: Server) -> None:
    initiator = Peer.open(hub.url)
    peer = Peer.open(f"{hub.url}/{initiator.id}")
    try:
        initiator.sse.next()
        peer.close()
        initiator.sse.next(timeout=2)  # leave
        response = initiator.post(hub.url, "hi", cid=peer.cid)
        assert response.status_code == 404
    finally:
        initiator.close()


def test_initiator_leaving_ends_every_stream_and_the_swarm(hub: Server) -> None:
    initiator = Peer.open(hub.url)
    peers = [Peer.open(f"{hub.url}/{initiator.id}") for _ in range(10)]
    try:
        initiator.sse.events(10)
        initiator.close()
        for peer in peers:
            assert peer.sse.wait_end(timeout=2), "peer stream still open"
        assert requests.get(f"{hub.url}/{initiator.id}", timeout=5).status_code == 404
        response = peers[0].post(hub.url, "anyone?")
        assert response.status_code == 404
    finally:
        for p in peers:
            p.close()


def test_200_peers_all_receive_a_broadcast(hub: Server) -> None:
    initiator = Peer.open(hub.url)
    peers = [Peer.open(f"{hub.url}/{initiator.id}") for _ in range(200)]
    try:
        initiator.sse.events(200)
        assert peers[-1].post(hub.url, {"n": 200}).status_code == 200
        for who in (initiator, *peers):
            event = who.sse.next()
            assert (event.event, event.json()) == ("signal", {"n": 200})
    finally:
        for p in (*peers, initiator):
            p.close()


def test_keepalive_comments(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"ping_interval": 0.2})
    # Pings go to clients that ask for an event stream (tests/test_ordering.py: not moshpit's).
    with SSE.open(srv.url, headers={"Accept": "text/event-stream"}) as sse:
        sse.next()
        time.sleep(0.5)
        sse.quiet(0.1)
        assert bytes(sse.raw).count(b":\n\n") >= 2
        assert bytes(sse.raw).startswith(b"event: connect\n")


def test_reset_connection_leaves(make_server) -> None:  # type: ignore[no-untyped-def]
    """A peer whose connection is reset (not closed cleanly) leaves as promptly."""
    srv = make_server({"ping_interval": 0.1})
    initiator = Peer.open(srv.url)
    try:
        raw = socket.create_connection(("127.0.0.1", srv.port))
        raw.sendall(f"GET /signal/{initiator.id} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        initiator.sse.next()  # join
        # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.close()
        assert initiator.sse.next(timeout=1).event == "leave"
    finally:
        initiator.close()


def test_streams_refused_without_gevent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Under a threaded server without monkey-patching a stream is a clear error, not a hang."""
    import sys

    from tests.servers import Process, free_port

    port = free_port()
    code = (
        "from tests.apps import create_app; "
        f"create_app().run(port={port}, threaded=True, use_reloader=False)"
    )
    srv = Process.start([sys.executable, "-c", code], port=port, log=tmp_path / "run.log")
    try:
        response = requests.get(f"{srv.origin}/signal", timeout=5)
        assert response.status_code == 500
        assert "gevent" in response.json()["error"]
        # The server itself keeps answering.
        assert requests.get(f"{srv.origin}/signal/a/b", timeout=5).status_code == 404
    finally:
        srv.stop()
    assert "gunicorn -k gevent" in srv.output()


# -- application API and lifecycle -----------------------------------------------------


def test_server_side_send_and_stats(hub: Server) -> None:
    initiator = Peer.open(hub.url)
    peer = Peer.open(f"{hub.url}/{initiator.id}")
    try:
        initiator.sse.next()
        sent = requests.post(
            f"{hub.origin}/_test/send/{initiator.id}", json={"data": {"from": "server"}}, timeout=5
        )
        assert sent.json() == {"ok": True}
        assert initiator.sse.next().json() == {"from": "server"}
        assert peer.sse.next().json() == {"from": "server"}
        direct = requests.post(
            f"{hub.origin}/_test/send/{initiator.id}",
            json={"data": "only you", "cid": peer.cid},
            timeout=5,
        )
        assert direct.json() == {"ok": True}
        assert peer.sse.next().json() == "only you"
        assert initiator.sse.quiet(0.1) == []
        missing = requests.post(f"{hub.origin}/_test/send/{'0' * 32}", json={"data": 1}, timeout=5)
        assert missing.json() == {"ok": False}
        stats = hub.stats()
        assert stats["swarms"] >= 1 and stats["streams"] >= 2
    finally:
        peer.close()
        initiator.close()


def test_lifecycle_signals_fire(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()
    initiator = Peer.open(srv.url)
    peer = Peer.open(f"{srv.url}/{initiator.id}")
    initiator.sse.next()
    peer.close()
    initiator.sse.next(timeout=2)
    initiator.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        fired = [
            f for f in srv.fired() if f["signal"] not in ("client_connected", "client_disconnected")
        ]
        if len(fired) >= 4:
            break
        time.sleep(0.05)
    sid = initiator.id
    expected = [
        {"signal": "swarm_created", "swarm_id": sid, "cid": initiator.cid},
        {"signal": "peer_joined", "swarm_id": sid, "cid": peer.cid},
        {"signal": "peer_left", "swarm_id": sid, "cid": peer.cid},
        {"signal": "swarm_closed", "swarm_id": sid, "cid": initiator.cid},
    ]
    if isinstance(srv, Pair):  # each fires in its own process: the order holds within one only
        key = lambda item: json.dumps(item, sort_keys=True)  # noqa: E731
        assert sorted(map(key, fired)) == sorted(map(key, expected))
    else:
        assert fired == expected
    streams = [f for f in srv.fired() if f["signal"].startswith("client_")]
    assert (
        sorted(f["signal"] for f in streams)
        == ["client_connected"] * 2 + ["client_disconnected"] * 2
    )


# -- mounting and settings -------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/rtc/hub"])
def test_prefixes(make_server, prefix: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"url_prefix": prefix})
    base = srv.origin + prefix
    initiator = Peer.open(base or srv.origin)
    peer = Peer.open(f"{base}/{initiator.id}")
    try:
        initiator.sse.next()
        assert peer.post(base, {"p": prefix}).status_code == 200
        assert initiator.sse.next().json() == {"p": prefix}
        assert requests.get(f"{base}/a/b", timeout=5).status_code == 404
        with SSE.open(base + "/") as again:
            assert again.status == 200
    finally:
        peer.close()
        initiator.close()


def test_create_status_201_and_small_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"create_status": 201, "limit": "1kb"})
    initiator = Peer.open(srv.url)
    try:
        assert initiator.sse.status == 201
        assert initiator.post(srv.url, "x" * 1100).status_code == 413
        assert initiator.post(srv.url, "x" * 900).status_code == 200
    finally:
        initiator.close()


def test_gevent_wsgiserver_detects_close(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(server="pywsgi")
    initiator = Peer.open(srv.url)
    peer = Peer.open(f"{srv.url}/{initiator.id}")
    try:
        initiator.sse.next()
        peer.close()
        assert initiator.sse.next(timeout=1.0).event == "leave"
    finally:
        initiator.close()


@pytest.mark.single_process
@pytest.mark.parametrize("fast_path", [False, True, "auto"])
def test_fast_path_skips_flask_only_for_swarm_requests(make_server, fast_path: bool | str) -> None:  # type: ignore[no-untyped-def]
    """Forced on, the fast path skips the app's hooks for swarm requests; by default
    (auto) this app's before_request hook keeps every request on Flask's path."""
    srv = make_server({"fast_path": fast_path})
    initiator = Peer.open(srv.url)
    try:
        assert initiator.post(srv.url, "hi").status_code == 200
        assert requests.get(srv.url + "/a/b", timeout=5).status_code == 404
        with SSE.open(srv.url + "/channels/hooks") as sse:
            assert sse.status == 200
        hooked = requests.get(srv.origin + "/_test/hooked", timeout=5).json()
        swarm_requests = ["GET /signal", f"POST /signal/{initiator.id}"]
        others = ["GET /signal/a/b", "GET /signal/channels/hooks"]
        assert hooked == (others if fast_path is True else swarm_requests + others)
        assert srv.stats()["fast_path"] is (fast_path is True)
    finally:
        initiator.close()
