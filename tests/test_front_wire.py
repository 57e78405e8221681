"""engine/front_wire.py: frames survive any split of the byte stream, and connections keep their bytes."""

from __future__ import annotations

import socket
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from talon_opa.core.events import decode_alert
from talon_opa.engine import front_wire

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
records = st.lists(st.tuples(st.integers(0, 3), st.integers(), json_values, st.binary()), max_size=8)


@given(st.lists(records, min_size=1, max_size=6), st.lists(st.integers(1, 64), max_size=40))
def test_frames_come_out_whole_whatever_the_reads(batches: list[list[Any]], cuts: list[int]) -> None:
    stream = b"".join(front_wire.frame(batch) for batch in batches)
    frames = front_wire.Frames()
    out: list[Any] = []
    pos = 0
    for cut in cuts:
        out += frames.feed(stream[pos : pos + cut])
        pos += cut
    out += frames.feed(stream[pos:])
    assert out == [[tuple(r) for r in batch] for batch in batches]


def test_an_alert_with_a_repeated_key_nested_crosses_as_plain_objects() -> None:
    alert = decode_alert(b'{"rule": "r", "output_fields": {"x": {"a": 1, "a": 2}, "y": [{"b": 1, "b": 3}]}}')
    [[values]] = front_wire.Frames().feed(front_wire.frame([front_wire.alert_values(alert)]))
    crossed = front_wire.alert_of(values)
    assert crossed == alert
    assert type(crossed.output_fields["x"]) is dict
    assert type(crossed.output_fields["y"][0]) is dict


def test_connections_arrive_in_order_with_what_was_read_of_them() -> None:
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for i, (a, _) in enumerate(pairs):
            front_wire.send_connection(here, a.fileno(), b"read %d" % i)
        received = front_wire.Connections()
        got: list[tuple[int, bytes]] = []
        while len(got) < len(pairs):
            more = received.receive(there)
            assert more is not None
            got += more
        for i, (fd, read) in enumerate(got):
            assert read == b"read %d" % i
            with socket.socket(fileno=fd) as copy:  # the same connection: what goes in comes out at its peer
                copy.sendall(b"via %d" % i)
            assert pairs[i][1].recv(16) == b"via %d" % i
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        here.close()
        there.close()
