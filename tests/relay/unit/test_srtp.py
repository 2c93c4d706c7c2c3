"""relay/_aiortc/srtp.py: the same SRTP as pylibsrtp's Session, the same errors and limits."""

from __future__ import annotations

import os

import pytest
from pylibsrtp import Error, Policy, Session

from relay._aiortc.srtp import BUFFER, TRAILER, FastSrtp, internals_problems
from tests.relay.unit.conftest import rtp

KEY = os.urandom(30)


def _pair() -> tuple[Session, Session]:
    return (
        Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND)),
        Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND)),
    )


def test_packets_protected_fast_are_what_pylibsrtp_makes_and_unprotect_either_way() -> None:
    slow_tx, _ = _pair()
    fast_tx_session, rx_session = _pair()
    fast_tx, fast_rx = FastSrtp(fast_tx_session), FastSrtp(rx_session)
    for seq in range(1, 50):
        plain = rtp(seq, seq * 960)
        protected = fast_tx.protect(plain)
        assert protected == slow_tx.protect(plain)  # same key, same index: same bytes
        assert protected != plain and len(protected) == len(plain) + 10
        assert fast_rx.unprotect(protected) == plain
    # the session object itself still works on the same context (aiortc's RTCP path)
    plain = rtp(50, 50 * 960)
    assert fast_rx.unprotect(fast_tx_session.protect(plain)) == plain


def test_a_forged_a_replayed_and_a_too_long_packet_raise_what_pylibsrtp_raises() -> None:
    tx, rx = _pair()
    fast_rx = FastSrtp(rx)
    protected = tx.protect(rtp(1, 960))
    forged = bytearray(protected)
    forged[-1] ^= 0xFF
    with pytest.raises(Error):
        fast_rx.unprotect(bytes(forged))
    assert fast_rx.unprotect(protected) == rtp(1, 960)
    with pytest.raises(Error):
        fast_rx.unprotect(protected)  # replayed
    with pytest.raises(ValueError, match="too long"):
        fast_rx.unprotect(bytes(BUFFER + 1))
    with pytest.raises(ValueError, match="too long"):
        FastSrtp(tx).protect(rtp(2, 0) + bytes(BUFFER - TRAILER))


def test_the_internals_it_needs_are_there() -> None:
    assert internals_problems() == []
