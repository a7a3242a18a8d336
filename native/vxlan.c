/* VXLAN in the datapath: wrapping a routed packet for another node and opening a VXLAN frame for
 * our VTEP, in C, byte for byte what the Python fast path does.
 *
 * Theory of operation
 * -------------------
 * The pipeline decides once per flow that its packets go to (or come from) another node; the
 * datapath replays that decision per packet, and these three functions do the per-packet part
 * of the tunnel. Each has a Python reference that tests hold it equal to, byte for byte, and
 * declines (-1) exactly where the reference returns None:
 *
 *   - vs_vxlan_source_port   vswitch/wire/vxlan.py: source_port (the exact table's hash of
 *                            inner_flow_key, mapped into Linux's ip_local_port_range by
 *                            multiplication, as Linux's udp_flow_src_port maps its hash);
 *   - vs_vxlan_wrap          vswitch/core/fast_path.py: FastPath._encapsulated after
 *                            pipeline/tunnel.py: outer_vnet (Encapsulation.outer_pieces,
 *                            wire/vxlan.py: encapsulation_headers, _outer_tos);
 *   - vs_vxlan_open          FastPath._opened with pipeline/tunnel.py: inner_vnet.
 *
 * The virtio-net header (l2_offset bytes in front of the Ethernet header, 0 without one) is
 * converted as the references convert it: a partial checksum moves by the outer headers, a TCP
 * super-frame crosses whole only as a UDP-tunnel GSO frame, which needs the 24-byte header
 * (wire/tunnel_offload.py explains the kernel's rules). Header sizes other than 0, 10 and 24
 * bytes are declined: the references would change the frame's header size under the port.
 *
 * Bounds: every byte read is at an offset checked against the length given first; outputs are
 * written only after the whole size is known to fit cap. Nothing allocates.
 */
#include <string.h>
#include "vswitch_native.h"

#define ETH_LEN 14u
#define IP_LEN 20u
#define UDP_LEN 8u
#define VXLAN_LEN 8u
#define OUTER_LEN (ETH_LEN + IP_LEN + UDP_LEN + VXLAN_LEN)  /* 50: vxlan.OUTER_HEADERS_LEN */
#define MAX_INNER_FRAME (0xffffu - IP_LEN - UDP_LEN - VXLAN_LEN)  /* vxlan.MAX_INNER_FRAME_LEN */
/* An outer packet with at least an inner Ethernet and IPv4 header (fast_path._OUTER_MIN). */
#define OUTER_MIN (IP_LEN + UDP_LEN + VXLAN_LEN + ETH_LEN + IP_LEN)
#define MIN_L4_START (ETH_LEN + IP_LEN)

#define SOURCE_PORT_LOW 32768u   /* Linux's default net.ipv4.ip_local_port_range */
#define SOURCE_PORT_HIGH 60999u

#define VNET_LEGACY 10u          /* struct virtio_net_hdr */
#define VNET_TUNNEL 24u          /* struct virtio_net_hdr_v1_hash_tunnel */
#define F_NEEDS_CSUM 0x01u
#define F_DATA_VALID 0x02u
#define F_UDP_TUNNEL_CSUM 0x08u
#define PLAIN_FLAGS (F_NEEDS_CSUM | F_DATA_VALID)
#define TUNNEL_FLAGS (PLAIN_FLAGS | F_UDP_TUNNEL_CSUM)
#define GSO_NONE 0u
#define GSO_TCPV4 1u
#define GSO_TCPV6 4u
#define GSO_ECN 0x80u
#define GSO_UDP_TUNNEL_IPV4 0x20u
#define GSO_UDP_TUNNEL (0x20u | 0x40u)
#define OUTER_TH_OFFSET (OUTER_LEN - UDP_LEN - VXLAN_LEN)  /* 34: outer UDP from the outer MAC */
#define INNER_NH_OFFSET (OUTER_LEN + ETH_LEN)             /* 64: inner IPv4 from the outer MAC */

#define PROTO_TCP 6u
#define PROTO_UDP 17u
#define VXLAN_FLAG_VNI 0x08u
#define ECN_MASK 0x03u
#define ECN_CE 0x03u
#define ECN_ECT0 0x02u
#define OUTER_TTL 64u

static uint16_t get16be(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint16_t get16le(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static void put16be(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put16le(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

static int is_tcp_gso(unsigned gso_type)
{
    unsigned inner = gso_type & ~GSO_ECN & 0xffu;
    return inner == GSO_TCPV4 || inner == GSO_TCPV6;
}

uint16_t vs_vxlan_source_port(const uint8_t *flow_key, size_t len, uint64_t seed)
{
    uint64_t hash = vs_exact_hash(flow_key, len, seed);
    uint64_t span = SOURCE_PORT_HIGH - SOURCE_PORT_LOW + 1u;
    return (uint16_t)(SOURCE_PORT_LOW + (((hash >> 32) * span) >> 32));
}

/* ---- wrapping ---------------------------------------------------------------------------- */

/* tunnel._tunnel_gso_header: the 24-byte header of a TCP super-frame crossing as UDP-tunnel GSO. */
static int tunnel_gso_header(const uint8_t *vnet, size_t inner_len, uint8_t *out)
{
    unsigned flags = vnet[0], gso_type = vnet[1];
    uint32_t hdr_len = get16le(vnet + 2), csum_start = get16le(vnet + 6);
    uint32_t csum_offset = get16le(vnet + 8);
    if (inner_len + OUTER_LEN - ETH_LEN > 0xffffu || flags & ~PLAIN_FLAGS
            || !(flags & F_NEEDS_CSUM) || csum_start < MIN_L4_START
            || csum_start + csum_offset + 2u > inner_len || !is_tcp_gso(gso_type)
            || hdr_len + OUTER_LEN > 0xffffu)
        return -1;
    memset(out, 0, VNET_TUNNEL);
    out[0] = F_NEEDS_CSUM;
    out[1] = (uint8_t)(gso_type | GSO_UDP_TUNNEL_IPV4);
    put16le(out + 2, hdr_len + OUTER_LEN);
    memcpy(out + 4, vnet + 4, 2);  /* gso_size */
    put16le(out + 6, csum_start + OUTER_LEN);
    put16le(out + 8, csum_offset);
    put16le(out + 20, OUTER_TH_OFFSET);
    put16le(out + 22, INNER_NH_OFFSET);
    return 0;
}

/* tunnel.outer_vnet: the encapsulated frame's header (l2 bytes) for an inner_len-byte inner
 * frame read with vnet; -1 where it returns None. */
static int outer_vnet(const uint8_t *vnet, size_t l2, size_t inner_len, uint8_t *out)
{
    if (l2 == 0)
        return 0;
    if (vnet[1] != GSO_NONE)
        return l2 == VNET_TUNNEL ? tunnel_gso_header(vnet, inner_len, out) : -1;
    if (vnet[0] & ~PLAIN_FLAGS || inner_len > MAX_INNER_FRAME)
        return -1;
    memcpy(out, vnet, l2);
    if (!(vnet[0] & F_NEEDS_CSUM))
        return 0;
    uint32_t start = get16le(vnet + 6), offset = get16le(vnet + 8);
    if (start < MIN_L4_START || (size_t)start + offset + 2u > inner_len
            || start + OUTER_LEN > 0xffffu)
        return -1;
    put16le(out + 6, start + OUTER_LEN);
    return 0;
}

int64_t vs_vxlan_wrap(const vs_dp_action *a, const uint8_t *vnet, size_t l2_offset,
                      const uint8_t *ip, size_t ip_len, uint16_t ident, uint8_t *out, size_t cap)
{
    if ((l2_offset != 0 && l2_offset != VNET_LEGACY && l2_offset != VNET_TUNNEL)
            || ip_len < IP_LEN || ip[0] >> 4 != 4)
        return -1;
    size_t ihl = (size_t)(ip[0] & 0x0fu) * 4u;
    size_t inner_len = ETH_LEN + ip_len;
    size_t total = l2_offset + ETH_LEN + IP_LEN + UDP_LEN + VXLAN_LEN + inner_len;
    if (ihl < IP_LEN || ihl > ip_len || inner_len > MAX_INNER_FRAME || total > cap
            || a->encap_vni > 0xffffffu)
        return -1;
    if (outer_vnet(vnet, l2_offset, inner_len, out) != 0)
        return -1;

    /* vxlan.inner_flow_key: protocol and addresses, plus the ports of TCP and UDP when the
     * packet is not a fragment and they are there. */
    uint8_t key[13];
    size_t key_len = 9;
    uint8_t proto = ip[9];
    key[0] = proto;
    memcpy(key + 1, ip + 12, 8);
    if ((proto == PROTO_TCP || proto == PROTO_UDP) && !(get16be(ip + 6) & 0x3fffu)
            && ip_len >= ihl + 4u) {
        memcpy(key + 9, ip + ihl, 4);
        key_len = 13;
    }
    uint16_t src_port = vs_vxlan_source_port(key, key_len, a->encap_hash_seed);
    uint8_t ecn = ip[1] & ECN_MASK;
    uint8_t tos = ecn == ECN_CE ? ECN_ECT0 : ecn;  /* RFC 6040 normal mode, as Linux */

    uint8_t *p = out + l2_offset;
    memcpy(p, a->rewrite, 12);
    put16be(p + 12, 0x0800);
    uint8_t *outer_ip = p + ETH_LEN;
    outer_ip[0] = 0x45;
    outer_ip[1] = tos;
    put16be(outer_ip + 2, IP_LEN + UDP_LEN + VXLAN_LEN + inner_len);
    put16be(outer_ip + 4, ident);
    put16be(outer_ip + 6, 0);  /* DF clear, as Linux's "df unset" */
    outer_ip[8] = OUTER_TTL;
    outer_ip[9] = PROTO_UDP;
    put16be(outer_ip + 10, 0);
    memcpy(outer_ip + 12, a->encap_src_ip, 4);
    memcpy(outer_ip + 16, a->encap_dst_ip, 4);
    put16be(outer_ip + 10, vs_checksum(outer_ip, IP_LEN));
    uint8_t *udp = outer_ip + IP_LEN;
    put16be(udp, src_port);
    put16be(udp + 2, a->encap_port);
    put16be(udp + 4, UDP_LEN + VXLAN_LEN + inner_len);
    put16be(udp + 6, 0);  /* RFC 7348 section 5: SHOULD be 0 over IPv4 */
    uint8_t *vx = udp + UDP_LEN;
    uint32_t vni = a->encap_vni;
    vx[0] = VXLAN_FLAG_VNI;
    vx[1] = vx[2] = vx[3] = 0;
    vx[4] = (uint8_t)(vni >> 16);
    vx[5] = (uint8_t)(vni >> 8);
    vx[6] = (uint8_t)vni;
    vx[7] = 0;
    uint8_t *inner = vx + VXLAN_LEN;
    memcpy(inner, a->encap_inner_macs, 12);
    put16be(inner + 12, 0x0800);
    if (inner + ETH_LEN != ip) /* in place: the packet is already where it goes */
        memcpy(inner + ETH_LEN, ip, ip_len);
    return (int64_t)total;
}

/* ---- opening ----------------------------------------------------------------------------- */

/* tunnel._inner_gso_header: the inner frame's header of a UDP-tunnel GSO super-frame. */
static int inner_gso_header(const uint8_t *vnet, size_t l2, uint8_t *out)
{
    unsigned flags = vnet[0], gso_type = vnet[1];
    unsigned inner_type = gso_type & ~GSO_UDP_TUNNEL & 0xffu;
    uint32_t hdr_len = get16le(vnet + 2), csum_start = get16le(vnet + 6);
    if (flags & ~TUNNEL_FLAGS || !(flags & F_NEEDS_CSUM)
            || (gso_type & GSO_UDP_TUNNEL) != GSO_UDP_TUNNEL_IPV4 || !is_tcp_gso(inner_type)
            || get16le(vnet + 20) != OUTER_TH_OFFSET || get16le(vnet + 22) != INNER_NH_OFFSET
            || csum_start < INNER_NH_OFFSET)
        return -1;
    memset(out, 0, l2);
    out[0] = F_NEEDS_CSUM;
    out[1] = (uint8_t)inner_type;
    put16le(out + 2, hdr_len > OUTER_LEN ? hdr_len - OUTER_LEN : 0);
    memcpy(out + 4, vnet + 4, 2);  /* gso_size */
    put16le(out + 6, csum_start - OUTER_LEN);
    memcpy(out + 8, vnet + 8, 2);  /* csum_offset */
    return 0;
}

/* tunnel_offload.decap_vnet then widen_vnet, for a 24-byte header that is not GSO but has flags
 * beyond the plain two (the tunnel checksum flag): the inner frame's header. */
static int decap_plain_header(const uint8_t *vnet, size_t l2, uint8_t *out)
{
    unsigned flags = vnet[0];
    uint32_t hdr_len = get16le(vnet + 2), csum_start = get16le(vnet + 6);
    if (flags & ~TUNNEL_FLAGS)
        return -1;
    memset(out, 0, l2);
    if (!(flags & F_NEEDS_CSUM) || csum_start < OUTER_LEN) {
        /* DATA_VALID vouches for the inner checksum only with the tunnel checksum flag. */
        if (flags & F_DATA_VALID && flags & F_UDP_TUNNEL_CSUM && !(flags & F_NEEDS_CSUM))
            out[0] = F_DATA_VALID;
        return 0;
    }
    if (csum_start < OUTER_LEN + MIN_L4_START)
        return -1;
    out[0] = F_NEEDS_CSUM;
    put16le(out + 2, hdr_len > OUTER_LEN ? hdr_len - OUTER_LEN : 0);
    put16le(out + 6, csum_start - OUTER_LEN);
    memcpy(out + 8, vnet + 8, 2);  /* csum_offset */
    return 0;
}

/* tunnel.inner_vnet: the inner frame's header (l2 bytes) of a VXLAN frame read with vnet. */
static int inner_vnet(const uint8_t *vnet, size_t l2, uint8_t *out)
{
    if (l2 == 0)
        return 0;
    if (vnet[1] != GSO_NONE || vnet[0] & ~PLAIN_FLAGS) {
        if (l2 < VNET_TUNNEL)
            return -1;
        if (vnet[1] != GSO_NONE)
            return inner_gso_header(vnet, l2, out);
        return decap_plain_header(vnet, l2, out);
    }
    if (!(vnet[0] & F_NEEDS_CSUM)) {
        memcpy(out, vnet, l2);
        return 0;
    }
    uint32_t start = get16le(vnet + 6);
    if (start < OUTER_LEN + ETH_LEN) {
        memset(out, 0, l2);  /* the partial checksum was the outer UDP's: gone with it */
        return 0;
    }
    memcpy(out, vnet, l2);
    put16le(out + 6, start - OUTER_LEN);
    return 0;
}

int64_t vs_vxlan_open(const vs_dp_action *a, const uint8_t *frame, size_t len, size_t l2_offset,
                      uint8_t *out, size_t cap)
{
    if (l2_offset != 0 && l2_offset != VNET_LEGACY && l2_offset != VNET_TUNNEL)
        return -1;
    size_t l3 = l2_offset + ETH_LEN;
    if (len < l3 + OUTER_MIN)
        return -1;
    const uint8_t *ip = frame + l3;
    /* IPv4 without options, UDP, not a fragment (DF may be set), not marked CE: an outer CE
     * must be marked onto the inner header, which the pipeline does. */
    if (ip[0] != 0x45 || ip[9] != PROTO_UDP || ip[6] & 0x3fu || ip[7]
            || (ip[1] & ECN_CE) == ECN_CE)
        return -1;
    size_t total = get16be(ip + 2);
    if (total < OUTER_MIN || total > len - l3 || vs_checksum(ip, IP_LEN) != 0)
        return -1;
    const uint8_t *udp = ip + IP_LEN;
    int trusted = l2_offset && frame[0] & (F_NEEDS_CSUM | F_DATA_VALID);
    if (get16be(udp + 2) != a->encap_port || get16be(udp + 4) != total - IP_LEN
            || (get16be(udp + 6) && !trusted))
        return -1;
    const uint8_t *vx = udp + UDP_LEN;
    uint32_t vni = a->encap_vni;
    if (vni > 0xffffffu || vx[0] != VXLAN_FLAG_VNI || vx[1] || vx[2] || vx[3]
            || vx[4] != (uint8_t)(vni >> 16) || vx[5] != (uint8_t)(vni >> 8)
            || vx[6] != (uint8_t)vni || vx[7])
        return -1;
    const uint8_t *inner = vx + VXLAN_LEN;
    /* For our VTEP, and not from it (Linux drops such loops). */
    if (memcmp(inner, a->decap_vtep_mac, 6) != 0 || memcmp(inner + 6, a->decap_vtep_mac, 6) == 0)
        return -1;
    size_t inner_len = total - (IP_LEN + UDP_LEN + VXLAN_LEN);
    if (l2_offset + inner_len > cap || inner_vnet(frame, l2_offset, out) != 0)
        return -1;
    memcpy(out + l2_offset, inner, inner_len);
    return (int64_t)(l2_offset + inner_len);
}
