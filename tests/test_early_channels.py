"""EXT_EARLY_CHANNELS bookkeeping (ssh3/aio/early.py): what is held, replayed in
order after the 200, or dropped on a refusal or past the caps."""

from __future__ import annotations

import pytest
from e2e_helpers import BACKENDS

from ssh3.aio.early import EarlyChannels
from ssh3.connection import EXT_EARLY_CHANNELS, OUR_EXTENSIONS, HandshakeCompleted


def test_bit_is_ours_and_only_announced_by_a_server():
    assert EXT_EARLY_CHANNELS == 0x40
    # the protocol adds it only for a server that holds early channels
    assert not OUR_EXTENSIONS & EXT_EARLY_CHANNELS


def test_nothing_held_for_a_control_stream_nobody_named():
    early: EarlyChannels[str] = EarlyChannels()
    assert early.admit(0, 4, "ch4", unannounced_ok=False) == (False, "")
    assert len(early) == 0


def test_held_channels_are_released_oldest_first():
    early: EarlyChannels[str] = EarlyChannels()
    early.expect(0)
    assert early.is_expected(0)
    assert early.admit(0, 4, "ch4", unannounced_ok=False) == (True, "")
    assert early.admit(0, 8, "ch8", unannounced_ok=False) == (True, "")
    assert early.is_held(4) and early.is_held(8)
    assert early.add_bytes(4, 100) == []
    assert early.release(0) == ["ch4", "ch8"]
    assert not early.is_held(4) and len(early) == 0
    # released once: a second release or discard finds nothing
    assert early.release(0) == [] and early.discard(0) == []


def test_discard_returns_the_channels_to_reset():
    early: EarlyChannels[str] = EarlyChannels()
    early.expect(0)
    early.expect(8)
    early.admit(0, 4, "a", unannounced_ok=False)
    early.admit(8, 12, "b", unannounced_ok=False)
    assert early.discard(0) == ["a"]
    # the other pending conversation keeps its channel
    assert early.is_held(12) and early.release(8) == ["b"]


def test_channel_cap_per_conversation():
    early: EarlyChannels[str] = EarlyChannels(max_channels=2)
    early.expect(0)
    assert early.admit(0, 4, "a", unannounced_ok=False)[0]
    assert early.admit(0, 8, "b", unannounced_ok=False)[0]
    held, reason = early.admit(0, 12, "c", unannounced_ok=False)
    assert not held and "more than 2 channels" in reason
    assert early.release(0) == ["a", "b"]


def test_byte_cap_drops_every_channel_of_the_conversation():
    early: EarlyChannels[str] = EarlyChannels(max_bytes=1000)
    early.expect(0)
    early.admit(0, 4, "a", unannounced_ok=False)
    early.admit(0, 8, "b", unannounced_ok=False)
    assert early.add_bytes(4, 600) == []
    assert early.add_bytes(8, 401) == ["a", "b"]
    assert len(early) == 0 and early.release(0) == []
    assert early.add_bytes(4, 1) == []  # no longer held: nothing to count


def test_peer_reset_forgets_a_held_channel():
    early: EarlyChannels[str] = EarlyChannels()
    early.expect(0)
    early.admit(0, 4, "a", unannounced_ok=False)
    early.admit(0, 8, "b", unannounced_ok=False)
    early.forget(4)
    assert early.release(0) == ["b"]


def test_channels_before_their_request_are_held_then_settled():
    """Packets reordered: the channel arrives before the CONNECT it names."""
    early: EarlyChannels[str] = EarlyChannels(max_unannounced=1)
    assert early.admit(0, 4, "a", unannounced_ok=True) == (True, "")
    assert not early.is_expected(0)
    # a second unannounced control stream is over the cap
    held, reason = early.admit(8, 12, "b", unannounced_ok=True)
    assert not held and "not received yet" in reason
    # the CONNECT arrives: the channel waits for its authentication like any other
    early.expect(0)
    assert early.is_expected(0) and early.release(0) == ["a"]
    # a request that was no CONNECT: its channels are discarded
    early.admit(16, 20, "c", unannounced_ok=True)
    assert early.discard(16) == ["c"]


def test_discard_all_on_connection_loss():
    early: EarlyChannels[str] = EarlyChannels()
    early.expect(0)
    early.admit(0, 4, "a", unannounced_ok=False)
    early.admit(8, 12, "b", unannounced_ok=True)
    assert sorted(early.discard_all()) == ["a", "b"]
    assert len(early) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_settings_come_with_its_first_flight(tmp_path, backend):
    """The client must know EXT_EARLY_CHANNELS when its handshake completes, before
    it sends the CONNECT: the server's SETTINGS travel with the server's first flight
    (0.5-RTT data), not a round trip later. Flights are counted, not timed."""
    from quic_pair import Pair

    from ssh3.connection import SettingsReceived

    p = Pair(tmp_path, backend, server_extensions=OUR_EXTENSIONS | EXT_EARLY_CHANNELS)
    p._transfer(p.client, p.server)  # the client's first flight (Initial)
    p.server.drain()
    # what the protocol does in transmit() on the server before the handshake is done
    p.server.backend.release_early_streams(p.server.quic)
    p._transfer(p.server, p.client)  # the server's first flight
    p.client.drain()
    assert p.client.of(HandshakeCompleted), "handshake did not complete in one round trip"
    assert p.client.of(SettingsReceived) == [
        SettingsReceived(OUR_EXTENSIONS | EXT_EARLY_CHANNELS)]
    assert p.client.conn.peer_extensions & EXT_EARLY_CHANNELS
