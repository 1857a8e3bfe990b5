"""Channels (PROTOCOL.md Part 2): publish, subscribe, history and gapless resume, limits."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
import requests

from tests.servers import start_server
from tests.support import SSE, Server


def publish(srv: Server, channel: str | list[str], data: Any, **kw: Any) -> str:
    response = requests.post(
        f"{srv.origin}/_test/publish", json={"channel": channel, "data": data, **kw}, timeout=5
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def subscribe(srv: Server, path: str = "/channels/news", **kw: Any) -> SSE:
    sse = SSE.open(srv.url + path, **kw)
    assert sse.status == 200, bytes(sse.raw)
    return sse


def wait_count(srv: Server, channel: str | None, expected: int, timeout: float = 3) -> None:
    deadline = time.monotonic() + timeout
    while True:
        count = srv.count(channel)
        if count == expected:
            return
        assert time.monotonic() < deadline, f"count {count}, expected {expected}"
        time.sleep(0.02)


# -- frames ----------------------------------------------------------------------------


def test_stream_starts_with_a_comment_then_frames_byte_for_byte(hub: Server) -> None:
    with subscribe(hub) as sse:
        sse.quiet(0.05)
        assert bytes(sse.raw) == b":ok\n\n"
        assert sse.headers["content-type"] == "text/event-stream; charset=utf-8"
        wait_count(hub, "news", 1)
        one = publish(hub, "news", "line1\nline2\r\nline3\rline4")
        two = publish(hub, "news", "", event="empty")
        three = publish(hub, "news", "trailing\n")
        four = publish(hub, "news", {"a": [1, 2], "s": "x: y"}, event="json", id="custom-7")
        five = publish(hub, "news", 42, retry=2500)
        assert four == "custom-7"
        events = sse.events(5)
        assert [e.id for e in events] == [one, two, three, four, five]
        assert bytes(sse.raw) == (
            b":ok\n\n"
            + f"data: line1\ndata: line2\ndata: line3\ndata: line4\nid: {one}\n\n".encode()
            + f"event: empty\ndata: \nid: {two}\n\n".encode()
            + f"data: trailing\ndata: \nid: {three}\n\n".encode()
            + b'event: json\ndata: {"a":[1,2],"s":"x: y"}\nid: custom-7\n\n'
            + f"data: 42\nid: {five}\nretry: 2500\n\n".encode()
        )
        assert events[0].data == "line1\nline2\nline3\nline4"
        assert events[2].data == "trailing\n"


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_cr_lf_nul_in_event_or_id_refused_and_nothing_sent(
    hub: Server, field: str, bad: str
) -> None:
    with subscribe(hub, "/channels/refusals") as sse:
        wait_count(hub, "refusals", 1)
        response = requests.post(
            f"{hub.origin}/_test/publish",
            json={"channel": "refusals", "data": "x", field: bad},
            timeout=5,
        )
        assert response.status_code == 400
        assert "CR, LF or NUL" in response.json()["error"]
        assert sse.quiet(0.2) == []


def test_ids_increase_across_channels(hub: Server) -> None:
    ids = [publish(hub, name, i) for i, name in enumerate(["a", "b", "a", "c"])]
    epochs = {i.rsplit("-", 1)[0] for i in ids}
    seqs = [int(i.rsplit("-", 1)[1]) for i in ids]
    assert len(epochs) == 1
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


def test_retry_sent_first_when_configured(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"retry": 1500})
    with subscribe(srv) as sse:
        sse.quiet(0.05)
        assert bytes(sse.raw) == b":ok\n\nretry: 1500\n\n"


def test_multi_channel_stream(hub: Server) -> None:
    with (
        subscribe(hub, "/channels?channel=m1&channel=m2") as sse,
        subscribe(hub, "/channels/m1?channel=m3") as other,
    ):
        wait_count(hub, "m1", 2)
        publish(hub, "m1", "one")
        publish(hub, "m2", "two")
        publish(hub, "m3", "three")
        publish(hub, ["m1", "m2"], "both")
        assert [e.data for e in sse.events(3)] == ["one", "two", "both"]
        assert [e.data for e in other.events(3)] == ["one", "three", "both"]
        assert sse.quiet(0.1) == [] and other.quiet(0.1) == []


def test_publish_all_reaches_every_channel_with_subscribers(hub: Server) -> None:
    with subscribe(hub, "/channels/pa1") as a, subscribe(hub, "/channels/pa2") as b:
        wait_count(hub, "pa2", 1)
        requests.post(f"{hub.origin}/_test/publish_all", json={"data": "all"}, timeout=5)
        assert a.next().data == "all"
        assert b.next().data == "all"


@pytest.mark.parametrize(
    "path", ["/channels", "/channels/bad name", "/channels/x?channel=no%20spaces"]
)
def test_bad_channel_requests(hub: Server, path: str) -> None:
    response = requests.get(hub.url + path, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"]


def test_channel_refuses_non_sse_accept(hub: Server) -> None:
    response = requests.get(hub.url + "/channels/x", headers={"Accept": "text/html"}, timeout=5)
    assert response.status_code == 406


# -- history and resume ----------------------------------------------------------------


@pytest.mark.parametrize(
    "how", ["header", "lastEventId", "evs_last_event_id", "lastEventID", "last_event_id"]
)
def test_resume_from_inside_the_window(hub: Server, how: str) -> None:
    channel = f"resume-{how.lower()}"
    ids = [publish(hub, channel, i) for i in range(5)]
    headers, query = {}, ""
    if how == "header":
        headers = {"Last-Event-ID": ids[1]}
    else:
        query = f"?{how}={ids[1]}"
    with subscribe(hub, f"/channels/{channel}{query}", headers=headers) as sse:
        replayed = sse.events(3)
        assert [e.id for e in replayed] == ids[2:]
        assert [e.data for e in replayed] == ["2", "3", "4"]
        live = publish(hub, channel, "live")
        assert sse.next().id == live
        assert sse.quiet(0.1) == []


def test_resume_from_zero_and_from_an_application_id(hub: Server) -> None:
    ids = [publish(hub, "zero", i, id=f"app-{i}") for i in range(3)]
    with subscribe(hub, "/channels/zero", headers={"Last-Event-ID": "0"}) as sse:
        assert [e.id for e in sse.events(3)] == ids
    with subscribe(hub, "/channels/zero", headers={"Last-Event-ID": "app-0"}) as sse:
        assert [e.id for e in sse.events(2)] == ids[1:]
        assert sse.quiet(0.1) == []


def test_resume_point_precedence_header_then_evs_then_last_event_id(hub: Server) -> None:
    """sse-channel's order: the header, then ``evs_last_event_id``, then ``lastEventId``."""
    ids = [publish(hub, "precedence", i) for i in range(4)]
    cases = [
        (f"?lastEventId={ids[0]}&evs_last_event_id={ids[1]}", {"Last-Event-ID": ids[2]}, ids[3:]),
        (f"?lastEventId={ids[0]}&evs_last_event_id={ids[1]}", {}, ids[2:]),
        (f"?last_event_id={ids[1]}&lastEventId={ids[0]}", {}, ids[1:]),
    ]
    for query, headers, expected in cases:
        with subscribe(hub, f"/channels/precedence{query}", headers=headers) as sse:
            assert [e.id for e in sse.events(len(expected))] == expected
            assert sse.quiet(0.1) == []


def test_numeric_ids_are_sent_in_decimal(hub: Server) -> None:
    with subscribe(hub, "/channels/numeric") as sse:
        wait_count(hub, "numeric", 1)
        assert publish(hub, "numeric", "a", id=1337) == "1337"
        assert publish(hub, "numeric", "b", id=0) == "0"
        assert publish(hub, "numeric", "c", id=0.5123) == "0.5123"  # egg-sse's Math.random()
        assert [e.id for e in sse.events(3)] == ["1337", "0", "0.5123"]
        assert b"id: 1337\n" in bytes(sse.raw)
    with subscribe(hub, "/channels/numeric", headers={"Last-Event-ID": "1337"}) as sse:
        assert [e.data for e in sse.events(2)] == ["b", "c"]


def test_evs_preamble_pads_the_start_with_2kb_of_comment(hub: Server) -> None:
    with subscribe(hub, "/channels/padded?evs_preamble=1") as sse:
        wait_count(hub, "padded", 1)
        publish(hub, "padded", "after")
        assert sse.next().data == "after"
        raw = bytes(sse.raw)
        assert raw.startswith(b":ok\n\n:" + b" " * 2048 + b"\n\n")
        assert raw.count(b"data: after\n") == 1


def test_flask_sse_subscribe_url_and_default_channel(hub: Server) -> None:
    """Flask-SSE's ``GET {prefix}?channel=x``; ``publish(data, type=...)`` goes to ``sse``."""
    with subscribe(hub, "?channel=fsse") as one, subscribe(hub, "/?channel=sse") as default:
        wait_count(hub, "fsse", 1)
        wait_count(hub, "sse", 1)
        publish(hub, "fsse", {"message": "hi"}, event="greeting")
        event = one.next()
        assert (event.event, event.json()) == ("greeting", {"message": "hi"})
        response = requests.post(
            f"{hub.origin}/_test/publish_flask_sse",
            json={"data": {"message": "Hello!"}, "type": "greeting"},
            timeout=5,
        )
        assert response.status_code == 200, response.text
        event = default.next()
        assert (event.event, event.json()) == ("greeting", {"message": "Hello!"})
        assert one.quiet(0.1) == []


def test_an_application_id_0_is_that_event_not_everything(hub: Server) -> None:
    """A counter from 0 (sse-channel's README): ``Last-Event-ID: 0`` resumes after it."""
    for n in range(3):
        publish(hub, "counter0", n, id=n)
    with subscribe(hub, "/channels/counter0", headers={"Last-Event-ID": "0"}) as sse:
        assert [e.id for e in sse.events(2)] == ["1", "2"]
        assert sse.quiet(0.1) == []


def test_a_resent_id_replaces_the_stored_event(hub: Server) -> None:
    """sse-channel's history: one stored event per id, the latest, at its new place."""
    publish(hub, "replaced", "v1", id="doc-1")
    publish(hub, "replaced", "other", id="doc-2")
    publish(hub, "replaced", "v2", id="doc-1")
    with subscribe(hub, "/channels/replaced", headers={"Last-Event-ID": "0"}) as sse:
        assert [(e.id, e.data) for e in sse.events(2)] == [("doc-2", "other"), ("doc-1", "v2")]
        assert sse.quiet(0.1) == []
    stored = requests.get(f"{hub.origin}/_test/history/replaced", timeout=5).json()
    assert [(e["id"], e["data"]) for e in stored] == [("doc-2", "other"), ("doc-1", "v2")]
    since = requests.get(f"{hub.origin}/_test/history/replaced?since=doc-2", timeout=5).json()
    assert [e["data"] for e in since] == ["v2"]


def test_history_and_subscribers_over_http(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"publish_key": "k"})
    url = srv.url + "/channels/hist/history"
    assert requests.get(url, timeout=5).status_code == 401
    auth = {"Authorization": "Bearer k"}
    empty = requests.get(url, headers=auth, timeout=5)
    assert empty.json() == {"channel": "hist", "subscribers": 0, "lost": False, "events": []}
    ids = [publish(srv, "hist", {"n": n}, event="tick") for n in range(3)]
    publish(srv, "hist", "plain", id=9, retry=500)
    with subscribe(srv, "/channels/hist"):
        wait_count(srv, "hist", 1)
        body = requests.get(url, headers=auth, timeout=5).json()
        assert body["subscribers"] == 1  # every process's, under Redis
        assert body["events"] == [
            *({"data": f'{{"n":{n}}}', "event": "tick", "id": ids[n]} for n in range(3)),
            {"data": "plain", "id": "9", "retry": 500},
        ]
        after = requests.get(url + f"?since={ids[1]}", headers=auth, timeout=5).json()
        assert [e["id"] for e in after["events"]] == [ids[2], "9"]
        unknown = requests.get(url + "?since=nope", headers=auth, timeout=5).json()
        assert unknown["lost"] is True


def test_resume_before_the_window_reports_the_loss(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"history_size": 3})
    ids = [publish(srv, "small", i) for i in range(6)]
    with subscribe(srv, "/channels/small", headers={"Last-Event-ID": ids[0]}) as sse:
        notice = sse.next()
        assert notice.event == "missed" and notice.json() == {"lastEventId": ids[0]}
        assert [e.id for e in sse.events(3)] == ids[3:]  # history size respected
    with subscribe(srv, "/channels/small", headers={"Last-Event-ID": ids[2]}) as sse:
        assert [e.id for e in sse.events(3)] == ids[3:]  # nothing lost: no notice
    unknown_epoch = "deadbeef-1"
    with subscribe(srv, "/channels/small", headers={"Last-Event-ID": unknown_epoch}) as sse:
        assert sse.next().event == "missed"
        assert [e.id for e in sse.events(3)] == ids[3:]


def test_multi_channel_resume(hub: Server) -> None:
    a = [publish(hub, "mr-a", f"a{i}") for i in range(3)]
    b = [publish(hub, "mr-b", f"b{i}") for i in range(3)]
    c = publish(hub, "mr-a", "a3")
    with subscribe(
        hub, "/channels?channel=mr-a&channel=mr-b", headers={"Last-Event-ID": a[2]}
    ) as sse:
        assert [e.id for e in sse.events(4)] == [*b, c]


def test_replay_racing_with_publishes_loses_and_repeats_nothing(hub: Server) -> None:
    channel = "race"
    first = [publish(hub, channel, {"n": -i}) for i in range(50)]
    burst: dict[str, Any] = {}

    def publish_burst() -> None:
        burst.update(
            requests.post(
                f"{hub.origin}/_test/publish_burst",
                json={"channel": channel, "count": 400},
                timeout=30,
            ).json()
        )

    thread = threading.Thread(target=publish_burst)
    thread.start()
    time.sleep(0.005)
    with subscribe(hub, f"/channels/{channel}", headers={"Last-Event-ID": first[9]}) as sse:
        thread.join(30)
        expected = first[10:] + burst["ids"]
        got = [e.id for e in sse.events(len(expected), timeout=5)]
        assert got == expected
        assert sse.quiet(0.2) == []


# -- declared routes -------------------------------------------------------------------


def test_declared_route_with_parameters(hub: Server) -> None:
    with SSE.open(hub.origin + "/rooms/lobby/feed") as sse:
        assert sse.status == 200
        wait_count(hub, "room.lobby", 1)
        publish(hub, "room.lobby", "hello lobby")
        publish(hub, "room.other", "not for lobby")
        assert sse.next().data == "hello lobby"
        assert sse.quiet(0.1) == []


def test_declared_route_refusal(hub: Server) -> None:
    response = requests.get(hub.origin + "/rooms/secret-1/feed", timeout=5)
    assert response.status_code == 403
    assert response.json()["error"]
    wait_count(hub, "room.secret-1", 0)


def test_declared_route_initial_event_comes_first(hub: Server) -> None:
    with SSE.open(hub.origin + "/rooms/init/feed?initial=1") as sse:
        first, second = sse.events(2)
        assert (first.event, first.json()) == ("init", {"room": "init", "state": "initial"})
        assert second.data == "during-initial"


# -- limits ----------------------------------------------------------------------------


@pytest.mark.single_process
def test_max_clients_and_channel_cap(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"max_clients": 3, "channel_max_clients": 2, "retry_after": 7})
    a = subscribe(srv, "/channels/capped")
    b = subscribe(srv, "/channels/capped")
    try:
        capped = requests.get(srv.url + "/channels/capped", timeout=5)
        assert capped.status_code == 503 and capped.headers["Retry-After"] == "7"
        assert "capped" in capped.json()["error"]
        c = subscribe(srv, "/channels/other")
        full = requests.get(srv.url, timeout=5)  # swarms count too
        assert full.status_code == 503 and full.headers["Retry-After"] == "7"
        c.close()
        wait_count(srv, None, 2)
        with SSE.open(srv.url) as swarm:
            assert swarm.status == 200
    finally:
        a.close()
        b.close()


@pytest.mark.single_process
def test_full_status_204_as_egg_sse(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"max_clients": 1, "full_status": 204})
    with subscribe(srv, "/channels/egg"):
        refused = requests.get(srv.url + "/channels/egg", timeout=5)
        assert refused.status_code == 204 and refused.content == b""
        assert "retry-after" not in refused.headers


def test_channel_streams_say_no_transform_swarms_keep_no_cache(hub: Server) -> None:
    with subscribe(hub, "/channels/headers") as sse, SSE.open(hub.url) as swarm:
        assert sse.headers["cache-control"] == "no-cache, no-transform"
        assert swarm.headers["cache-control"] == "no-cache"


@pytest.mark.single_process
def test_ping_payload_and_manual_ping_are_comments(hub: Server) -> None:
    """egg-sse's ``':ping'`` payload and sse-channel's ``ping()``: comments, no event, no id."""
    with subscribe(hub, "/channels/pinged") as sse, subscribe(hub, "/channels/other") as other:
        wait_count(hub, "pinged", 1)
        sse.quiet(0.05)
        start = len(sse.raw)
        assert publish(hub, "pinged", ":ping") == ""
        reached = requests.post(f"{hub.origin}/_test/ping", json={"channel": "pinged"}, timeout=5)
        assert reached.json() == {"reached": 1}
        publish(hub, "pinged", "after")
        assert sse.next().data == "after"
        assert bytes(sse.raw)[start:].startswith(b":ping\n\n:ping\n\ndata: after\n")
        assert other.quiet(0.1) == [] and b":ping" not in bytes(other.raw)
    with subscribe(hub, "/channels/pinged", headers={"Last-Event-ID": "0"}) as again:
        assert [e.data for e in again.events(1)] == ["after"]  # nothing of the pings kept


@pytest.mark.single_process
def test_retry_broadcast_reaches_open_and_new_streams(hub: Server) -> None:
    """sse-channel's ``retry(duration)``: sent now, and to the channel's new clients."""
    with subscribe(hub, "/channels/retried") as sse, subscribe(hub, "/channels/calm") as calm:
        wait_count(hub, "retried", 1)
        sse.quiet(0.05)
        start = len(sse.raw)
        body = {"ms": 2500, "channel": "retried"}
        assert requests.post(f"{hub.origin}/_test/retry", json=body, timeout=5).json() == {
            "reached": 1
        }
        publish(hub, "retried", "x")
        assert sse.next().data == "x"
        assert bytes(sse.raw)[start:].startswith(b"retry: 2500\n\n")
        assert b"retry:" not in bytes(calm.raw)
    with subscribe(hub, "/channels/retried") as again:
        again.quiet(0.05)
        assert bytes(again.raw).startswith(b":ok\n\nretry: 2500\n\n")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.single_process
def test_slow_client_is_dropped_others_keep_receiving(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"queue_size": 4, "history_size": 2})
    (worker,) = srv.worker_pids()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", srv.port))
    slow.sendall(b"GET /signal/channels/flood HTTP/1.1\r\nHost: x\r\n\r\n")
    with subscribe(srv, "/channels/flood") as fast:
        wait_count(srv, "flood", 2)
        before = rss_kb(worker)
        payload = "x" * (512 * 1024)
        for i in range(40):  # 20 MB in all, far more than the slow client's buffers
            sent = publish(srv, "flood", payload)
            got = fast.next(timeout=10)
            assert got.id == sent and len(got.data) == len(payload), i
        grown_mb = (rss_kb(worker) - before) / 1024
        assert srv.stats()["overflows"] == 1
        wait_count(srv, "flood", 1)
        # The slow client's backlog was bounded by its queue, not by what was published.
        assert grown_mb < 16, f"worker grew {grown_mb:.1f} MB"
    slow.close()


def test_a_client_reading_late_gets_every_frame_whole_and_in_order(make_server) -> None:  # type: ignore[no-untyped-def]
    """Frames published while the client does not read fill its buffers: some
    are written in part, their rest must go out before any later frame."""
    srv = make_server({"queue_size": 200, "queue_bytes": "8mb"})
    with subscribe(srv, "/channels/late", rcvbuf=4096) as late:
        wait_count(srv, "late", 1)
        # 6 MB in all, past what the socket buffers of both ends hold, in
        # sizes that do not divide them.
        payloads = [f"{i:03d}" + "y" * (100_000 + 7 * i) for i in range(60)]
        ids = [publish(srv, "late", payload) for payload in payloads]
        events = late.events(len(payloads), timeout=20)
        assert [event.id for event in events] == ids
        assert [event.data for event in events] == payloads
        publish(srv, "late", "after")
        assert late.next().data == "after"
    assert srv.stats()["overflows"] == 0


def test_connect_and_disconnect_signals_fire_once(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server()
    with subscribe(srv, "/channels/life") as sse:
        wait_count(srv, "life", 1)
        publish(srv, "life", 1)
        sse.next()
    wait_count(srv, "life", 0)
    fired = srv.fired()
    names = [f["signal"] for f in fired]
    assert names == [
        "channel_opened",
        "client_connected",
        "message_published",
        "channel_emptied",
        "client_disconnected",
    ]
    published = fired[2]
    assert published["channel"] == "life" and published["clients"] == 1
    assert fired[0]["channel"] == fired[3]["channel"] == "life"


def test_counts_are_prompt_after_a_close(hub: Server) -> None:
    streams = [subscribe(hub, "/channels/counted") for _ in range(3)]
    wait_count(hub, "counted", 3)
    streams[0].close()
    wait_count(hub, "counted", 2, timeout=1)
    for s in streams[1:]:
        s.close()
    wait_count(hub, "counted", 0, timeout=1)


def test_close_channel_ends_its_streams(hub: Server) -> None:
    with subscribe(hub, "/channels/closing") as a, subscribe(hub, "/channels/staying") as b:
        wait_count(hub, "staying", 1)
        requests.post(f"{hub.origin}/_test/close/closing", timeout=5)
        assert a.wait_end(timeout=2)
        assert not b.wait_end(timeout=0.2)


# -- publishing over HTTP --------------------------------------------------------------


def test_http_publish_is_off_by_default(hub: Server) -> None:
    response = requests.post(hub.url + "/channels/x", json={"data": 1}, timeout=5)
    assert response.status_code == 403
    assert response.json()["error"]


def test_http_publish_with_a_key(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"publish_key": "s3cret", "limit": "1kb"})
    url = srv.url + "/channels/keyed"
    assert requests.post(url, json={"data": 1}, timeout=5).status_code == 401
    wrong = requests.post(
        url, json={"data": 1}, headers={"Authorization": "Bearer nope"}, timeout=5
    )
    assert wrong.status_code == 403
    auth = {"Authorization": "Bearer s3cret"}
    with subscribe(srv, "/channels/keyed") as sse:
        wait_count(srv, "keyed", 1)
        ok = requests.post(url, json={"data": {"k": 1}, "event": "upd"}, headers=auth, timeout=5)
        assert ok.status_code == 200 and ok.json()["ok"] is True
        event = sse.next()
        assert (event.event, event.json(), event.id) == ("upd", {"k": 1}, ok.json()["id"])
        too_big = requests.post(url, json={"data": "x" * 2000}, headers=auth, timeout=5)
        assert too_big.status_code == 413
        bad = requests.post(url, json={"data": 1, "event": "a\nb"}, headers=auth, timeout=5)
        assert bad.status_code == 400
        missing = requests.post(url, json={"event": "x"}, headers=auth, timeout=5)
        assert missing.status_code == 400
        assert sse.quiet(0.1) == []


def test_http_publish_mercure_style(make_server) -> None:  # type: ignore[no-untyped-def]
    """Several channels in one POST (Mercure's repeated ``topic``), ``type``, ``retry``, ids."""
    srv = make_server({"publish_key": "k"})
    auth = {"Authorization": "Bearer k"}
    with (
        subscribe(srv, "/channels/mt1") as one,
        subscribe(srv, "/channels?channel=mt2&channel=mt3") as two,
    ):
        wait_count(srv, "mt3", 1)
        form = "topic=mt1&topic=mt2&data=hello&type=note&id=42&retry=700"
        ok = requests.post(
            srv.url + "/channels",
            data=form,
            headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
            timeout=5,
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["id"] == "42"
        for sse in (one, two):
            event = sse.next()
            assert (event.event, event.data, event.id) == ("note", "hello", "42")
            assert b"id: 42\nretry: 700\n\n" in bytes(sse.raw)
        both = requests.post(
            srv.url + "/channels/mt1?channel=mt3",
            json={"data": [1], "id": 7, "retry": 900},
            headers=auth,
            timeout=5,
        )
        assert both.status_code == 200 and both.json()["id"] == "7"
        assert one.next().id == "7" and two.next().id == "7"
        assert b"id: 7\nretry: 900\n\n" in bytes(two.raw)
        for bad in (
            {"data": 1, "retry": -1},
            {"data": 1, "id": [1]},
            {"data": 1, "id": True},
            {"data": 1, "topic": [3]},
        ):
            answer = requests.post(srv.url + "/channels/mt1", json=bad, headers=auth, timeout=5)
            assert answer.status_code == 400, bad
        nowhere = requests.post(srv.url + "/channels", json={"data": 1}, headers=auth, timeout=5)
        assert nowhere.status_code == 400
        assert one.quiet(0.1) == [] and two.quiet(0.1) == []


def test_configured_headers_on_every_stream(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server({"headers": {"X-Custom": "yes", "Cache-Control": "no-cache, no-transform"}})
    for path in ("/channels/headers", ""):
        with SSE.open(srv.url + path) as sse:
            assert sse.status == 200
            assert sse.headers["x-custom"] == "yes"
            assert sse.headers["cache-control"] == "no-cache, no-transform"
            assert sse.headers["x-accel-buffering"] == "no"
            assert sse.headers["content-type"] == "text/event-stream; charset=utf-8"


# -- configuration ---------------------------------------------------------------------


def test_environment_variables_below_config_and_keywords(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``FLASK_SIGNAL_*`` then ``SIGNAL_*`` variables, under config keys and keywords."""
    env = {
        "FLASK_SIGNAL_RETRY": "1500",
        "SIGNAL_RETRY": "99",  # FLASK_SIGNAL_ wins
        "SIGNAL_HEADERS": '{"X-From-Env": "yes"}',
        "SIGNAL_HISTORY_SIZE": "2",
    }
    srv = start_server(tmp_path, {}, extra_env=env)
    try:
        with subscribe(srv, "/channels/env") as sse:
            sse.quiet(0.05)
            assert bytes(sse.raw) == b":ok\n\nretry: 1500\n\n"
            assert sse.headers["x-from-env"] == "yes"
        ids = [publish(srv, "env", n) for n in range(3)]
        with subscribe(srv, "/channels/env", headers={"Last-Event-ID": "0"}) as sse:
            assert [e.id for e in sse.events(2)] == ids[1:]
    finally:
        srv.stop()
    srv = start_server(tmp_path, {"retry": 700}, extra_env=env)  # the keyword wins
    try:
        with subscribe(srv, "/channels/env") as sse:
            sse.quiet(0.05)
            assert bytes(sse.raw) == b":ok\n\nretry: 700\n\n"
    finally:
        srv.stop()


def test_config_precedence_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from flask import Flask

    from flask_signal import Signal

    monkeypatch.setenv("SIGNAL_RETRY", "1")
    monkeypatch.setenv("SIGNAL_QUEUE_SIZE", "7")
    app = Flask(__name__)
    app.config["SIGNAL_RETRY"] = 2
    Signal(app, history_size=3)
    settings = app.extensions["signal_state"].settings
    assert (settings.retry, settings.queue_size, settings.history_size) == (2, 7, 3)


def test_a_key_set_after_init_app_warns_at_start() -> None:
    from flask import Flask

    from flask_signal import Signal

    app = Flask(__name__)
    app.config["SIGNAL_RETRY"] = 2
    Signal(app)
    app.config["SIGNAL_PUBLISH_KEY"] = "too late"
    with pytest.warns(RuntimeWarning, match="SIGNAL_PUBLISH_KEY set after"):
        app.test_client().get("/signal/healthz")


def test_memory_broker_under_two_workers_warns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(tmp_path, {}, workers=2)
    try:
        for _ in range(6):  # reach both workers
            requests.get(srv.url + "/readyz", timeout=5)
        deadline = time.monotonic() + 5
        while "memory:// under 2 worker processes" not in srv.output():
            assert time.monotonic() < deadline, srv.output()
            time.sleep(0.05)
    finally:
        srv.stop()
