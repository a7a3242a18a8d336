"""The TCP state machine of connection tracking, after Linux's ``nf_conntrack_proto_tcp.c``.

Theory of operation
-------------------
* The next state is indexed by direction, by the packet's flag class (SYN, SYN-ACK, FIN, ACK, RST,
  none) and by the current state: ``TRANSITIONS[direction][flag class][state.value]``, the
  kernel's ``tcp_conntracks`` table cell for cell. This module only says what a packet would do;
  the connection tracker (``conntrack.py``) applies it to an entry.
* Cells the kernel marks *invalid* (a SYN-ACK from the client, a FIN before the handshake, a SYN
  from the server mid-connection, ...) are None, and flag combinations the kernel's ``tcp_error``
  rejects (SYN+FIN, FIN without ACK, no flags) have no class in ``CLASS_OF_FLAGS``: the caller
  drops and counts such packets, so a stray packet is never forwarded untranslated. Cells the
  kernel *ignores* (a SYN inside an established connection, a retransmitted SYN-ACK) are
  ``IGNORE``: accepted, counted and forwarded without changing the state or extending the
  timeout, since the end points may know better than the middle and will answer with a RST if
  not. After a RST, FIN and ACK segments stay in CLOSE, as in the kernel: they are the tail of the
  dead connection.
* Simultaneous open goes through SYN_SENT2, a state the kernel has and the Kubernetes semantics
  never mention; the table alone cannot tell that the last ACK of a simultaneous open completes
  it, so the tracker remembers that it went through SYN_SENT2.
* Each state lasts as long as its field of the tracker's ``Timeouts`` (``TIMEOUT_FIELD``).
* Known simplification: there is no sequence-number window tracking (the kernel's
  ``tcp_in_window``), so an old segment that happens to carry valid flags is accepted, and the
  kernel's shorter "unacknowledged data" and "retransmission" timeouts never apply.
"""
from __future__ import annotations

import enum

from vswitch.wire.headers import TcpFlag

FIN = int(TcpFlag.FIN)
SYN = int(TcpFlag.SYN)
RST = int(TcpFlag.RST)
ACK = int(TcpFlag.ACK)
URG = int(TcpFlag.URG)
#: The flags that decide a packet's class; PSH, ECE and CWR do not matter.
CLASSIFIED = FIN | SYN | RST | ACK | URG


class TcpState(enum.Enum):
    """The values are Linux's ``enum tcp_conntrack`` numbers, which index the transition table."""

    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9  # simultaneous open: a SYN seen from each side


# The ``Timeouts`` field each state lasts. NONE never lasts: an entry is created in SYN_SENT. It is
# mapped so that every state has a timeout.
TIMEOUT_FIELD = {
    TcpState.NONE: "syn_sent", TcpState.SYN_SENT: "syn_sent", TcpState.SYN_RECV: "syn_recv",
    TcpState.ESTABLISHED: "established", TcpState.FIN_WAIT: "fin_wait",
    TcpState.CLOSE_WAIT: "close_wait", TcpState.LAST_ACK: "last_ack",
    TcpState.TIME_WAIT: "time_wait", TcpState.CLOSE: "close", TcpState.SYN_SENT2: "syn_sent2",
}


# -- flag classes ---------------------------------------------------------------------------------

SYN_CLASS, SYNACK_CLASS, FIN_CLASS, ACK_CLASS, RST_CLASS, NONE_CLASS = range(6)


def flag_class(flags: int) -> int:
    """Linux's get_conntrack_index: RST wins, then SYN (with or without ACK), FIN, ACK."""
    if flags & RST:
        return RST_CLASS
    if flags & SYN:
        return SYNACK_CLASS if flags & ACK else SYN_CLASS
    if flags & FIN:
        return FIN_CLASS
    if flags & ACK:
        return ACK_CLASS
    return NONE_CLASS


# The flag combinations Linux's tcp_error accepts at all (its tcp_valid_flags), with their class.
# Anything else (SYN+FIN, SYN+RST, FIN without ACK, no flags) is invalid in every state. One dict
# lookup of ``flags & CLASSIFIED`` answers both questions per packet.
CLASS_OF_FLAGS: dict[int, int] = {
    flags: flag_class(flags) for flags in (
        SYN, SYN | URG, SYN | ACK, RST, RST | ACK,
        FIN | ACK, FIN | ACK | URG, ACK, ACK | URG)
}


# -- the transition table (Linux tcp_conntracks[2][6][TCP_CONNTRACK_MAX]) -------------------------

class Ignore:
    """Marks a table cell whose packet is accepted but changes nothing."""


IGNORE = Ignore()

Cell = TcpState | Ignore | None


def _row(*cells: Cell) -> tuple[Cell, ...]:
    assert len(cells) == len(TcpState)
    return cells


_NO, _SS, _SR, _ES, _FW, _CW, _LA, _TW, _CL, _S2 = TcpState
_IV = None  # invalid
_IG = IGNORE

# Columns, in TcpState value order:
#            NONE SYN_SENT SYN_RECV ESTABL FIN_WAIT CLOSE_WAIT LAST_ACK TIME_WAIT CLOSE SYN_SENT2
TRANSITIONS: tuple[tuple[tuple[Cell, ...], ...], ...] = (
    (  # ORIGINAL direction: packets from the client
        _row(_SS, _SS, _IG, _IG, _IG, _IG, _IG, _SS, _SS, _S2),  # SYN
        _row(_IV, _IV, _SR, _IV, _IV, _IV, _IV, _IV, _IV, _SR),  # SYN-ACK
        _row(_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),  # FIN
        _row(_ES, _IV, _ES, _ES, _CW, _CW, _TW, _TW, _CL, _IV),  # ACK
        _row(_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),  # RST
        _row(_IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV),  # none
    ),
    (  # REPLY direction: packets from the server (or the translated endpoint)
        _row(_IV, _S2, _IV, _IV, _IV, _IV, _IV, _SS, _IV, _S2),  # SYN
        _row(_IV, _SR, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _SR),  # SYN-ACK
        _row(_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),  # FIN
        _row(_IV, _IG, _SR, _ES, _CW, _CW, _TW, _TW, _CL, _IG),  # ACK
        _row(_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),  # RST
        _row(_IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV, _IV),  # none
    ),
)
