"""EXT_EARLY_CHANNELS bookkeeping (ssh3/aio/early.py): what is held, replayed in
order after the 200, or dropped on a refusal or past the caps."""

from __future__ import annotations

from ssh3.aio.early import EarlyChannels
from ssh3.connection import EXT_EARLY_CHANNELS, OUR_EXTENSIONS


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
