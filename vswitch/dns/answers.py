"""One DNS query in, one decision out: an answer from the cluster zone, a name to forward, or
nothing at all.

Theory of operation
-------------------
``decide`` parses the query's bytes (dnspython does the wire format) and returns a ``Reply``
with the response's bytes, a ``Forward`` for a name outside the node's zones, or a ``Drop``.
It keeps no state and does no I/O: the server (``vswitch.runtime.dns_server``) sends, forwards
and counts.

* A query that does not parse gets FORMERR when its header can be read (the ID is needed to
  match the answer), else it is dropped; a message that is itself a response is dropped, so
  that two resolvers can never answer each other in a loop. Other opcodes get NOTIMP, a query
  with other than one question FORMERR, another class than IN REFUSED.
* Names inside the cluster domain and the reverse zones are answered authoritatively (AA):
  the records of the name and type; NODATA (NOERROR, no answer, the SOA in the authority
  section) for a name that exists with other types only (AAAA: pods and services have IPv4
  addresses alone); NXDOMAIN with the SOA for a name that does not exist. SRV answers carry the
  A records of their targets in the additional section.
* Other names are forwarded when the node has upstream resolvers, and REFUSED when it has none.
* Over UDP an answer is cut to what the client can take: 512 bytes, or the payload size its
  EDNS option announces. A longer one goes out empty with TC set, and the client asks again
  over TCP (RFC 1035 4.2.1, RFC 6891 6.2.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from vswitch.dns.zone import TTL, ZoneView

HEADER_LEN = 12
UDP_PLAIN_LIMIT = 512  # what a client without EDNS takes over UDP (RFC 1035)
TCP_LIMIT = 65535


@dataclass(frozen=True)
class Reply:
    wire: bytes
    rcode: str  # "NOERROR", "NXDOMAIN", ... for the counters
    truncated: bool = False


@dataclass(frozen=True)
class Forward:
    """A query for a name outside the node's zones, for the upstream resolvers."""

    query: dns.message.Message
    name: str


@dataclass(frozen=True)
class Drop:
    reason: str  # "malformed" or "response"


Decision = Reply | Forward | Drop


def udp_limit(query: dns.message.Message) -> int:
    """The largest UDP answer ``query``'s sender takes."""
    if query.edns < 0:
        return UDP_PLAIN_LIMIT
    return max(UDP_PLAIN_LIMIT, min(query.payload, TCP_LIMIT))


def render(response: dns.message.Message, limit: int) -> Reply:
    """``response``'s bytes within ``limit``; when they do not fit, the question alone with TC."""
    rcode = dns.rcode.to_text(response.rcode())
    try:
        return Reply(response.to_wire(max_size=limit), rcode)
    except dns.exception.TooBig:
        response.answer = []
        response.authority = []
        response.additional = []
        response.flags |= dns.flags.TC
        return Reply(response.to_wire(max_size=limit), rcode, truncated=True)


def error_reply(query: dns.message.Message, rcode: dns.rcode.Rcode, limit: int,
                recursion: bool) -> Reply:
    response = dns.message.make_response(query, recursion_available=recursion)
    response.set_rcode(rcode)
    return render(response, limit)


def formerr_for(wire: bytes) -> Decision:
    """FORMERR for bytes that do not parse, if they have a query's header; else dropped."""
    if len(wire) < HEADER_LEN:
        return Drop("malformed")
    flags = int.from_bytes(wire[2:4], "big")
    if flags & dns.flags.QR:
        return Drop("response")
    response = dns.message.Message(id=int.from_bytes(wire[0:2], "big"))
    response.flags = dns.flags.QR | (flags & (dns.flags.RD | 0x7800))  # RD and the opcode
    response.set_rcode(dns.rcode.FORMERR)
    return Reply(response.to_wire(), "FORMERR")


def decide(wire: bytes, view: ZoneView, *, udp: bool, forwarding: bool) -> Decision:
    """What to do with the query ``wire``; see the module docstring."""
    try:
        query = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return formerr_for(wire)
    return decide_message(query, view, udp=udp, forwarding=forwarding)


def decide_message(query: dns.message.Message, view: ZoneView, *, udp: bool,
                   forwarding: bool) -> Decision:
    if query.flags & dns.flags.QR:
        return Drop("response")
    limit = udp_limit(query) if udp else TCP_LIMIT
    if query.opcode() != dns.opcode.QUERY:
        return error_reply(query, dns.rcode.NOTIMP, limit, forwarding)
    if len(query.question) != 1:
        return error_reply(query, dns.rcode.FORMERR, limit, forwarding)
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return error_reply(query, dns.rcode.REFUSED, limit, forwarding)
    if view.zone_of(question.name) is None:
        if forwarding:
            return Forward(query, question.name.to_text())
        return error_reply(query, dns.rcode.REFUSED, limit, forwarding)
    return render(authoritative(query, view, forwarding), limit)


def authoritative(query: dns.message.Message, view: ZoneView,
                  recursion: bool) -> dns.message.Message:
    """The response to a query for a name inside one of ``view``'s zones."""
    question = query.question[0]
    name, rdtype = question.name, question.rdtype
    response = dns.message.make_response(query, recursion_available=recursion)
    response.flags |= dns.flags.AA
    zone = view.zone_of(name)
    assert zone is not None
    found = view.lookup(name)
    if found is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(zone.soa)
        return response
    if name == zone.apex and rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
        response.answer.append(zone.soa)
    types = list(found) if rdtype == dns.rdatatype.ANY else [rdtype]
    for found_type in types:
        rdatas = found.get(found_type)
        if rdatas:
            response.answer.append(dns.rrset.from_rdata_list(name, TTL, rdatas))
    if not response.answer:
        response.authority.append(zone.soa)  # NODATA
    for rrset in list(response.answer):
        if rrset.rdtype != dns.rdatatype.SRV:
            continue
        for target in dict.fromkeys(rdata.target for rdata in rrset):
            addresses = (view.lookup(target) or {}).get(dns.rdatatype.A)
            if addresses:
                response.additional.append(dns.rrset.from_rdata_list(target, TTL, addresses))
    return response
