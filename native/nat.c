/* NAT rewrite of one IPv4 packet in place: addresses, ports or the ICMP echo identifier, with
 * every checksum updated incrementally (RFC 1624). The pure-Python twin, which also documents the
 * rules (UDP's "no checksum", virtio-net partial checksums, non-first fragments), is
 * vswitch/accel/pure.py:nat_rewrite; tests hold the two equal on random and truncated packets. */
#include <string.h>

#include "vswitch_native.h"

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)(v & 0xffu);
}

/* A partial checksum field holds a folded sum S, not its complement: S' = ~update(~S). */
static void update32_at(uint8_t *field, uint32_t old_value, uint32_t new_value, int partial)
{
    uint16_t csum = rd16(field);
    if (partial)
        csum = (uint16_t)~vs_checksum_update32((uint16_t)~csum, old_value, new_value);
    else
        csum = vs_checksum_update32(csum, old_value, new_value);
    wr16(field, csum);
}

static void update16_at(uint8_t *field, uint16_t old_word, uint16_t new_word)
{
    wr16(field, vs_checksum_update16(rd16(field), old_word, new_word));
}

int vs_nat_rewrite(uint8_t *packet, size_t len, const uint8_t *src_ip, const uint8_t *dst_ip,
                   int32_t sport, int32_t dport, int partial)
{
    if (len < 20)
        return VS_NAT_SHORT;
    size_t l4 = (size_t)(packet[0] & 0x0fu) * 4;
    if (l4 < 20)
        return VS_NAT_BAD_IHL;
    /* A non-first fragment carries no L4 header: only its addresses change. */
    int proto = (rd16(packet + 6) & 0x1fffu) ? -1 : packet[9];
    int csum_at = proto == 6 ? 16 : proto == 17 ? 6 : proto == 1 ? 2 : -1;
    int has_l4_csum = csum_at >= 0 && len >= l4 + (size_t)csum_at + 2;
    int udp_no_csum = proto == 17 && has_l4_csum && !partial && rd16(packet + l4 + 6) == 0;

    const uint8_t *addresses[2] = {src_ip, dst_ip};
    const size_t address_at[2] = {12, 16};
    for (int i = 0; i < 2; i++) {
        if (addresses[i] == NULL)
            continue;
        uint32_t old_value = rd32(packet + address_at[i]);
        uint32_t new_value = rd32(addresses[i]);
        if (old_value == new_value)
            continue;
        memcpy(packet + address_at[i], addresses[i], 4);
        update32_at(packet + 10, old_value, new_value, 0);
        if (has_l4_csum && proto != 1 && !udp_no_csum)
            update32_at(packet + l4 + (size_t)csum_at, old_value, new_value, partial);
    }
    if (proto == 6 || proto == 17) {
        const int32_t ports[2] = {sport, dport};
        for (size_t i = 0; i < 2; i++) {
            if (ports[i] < 0 || len < l4 + 2 * i + 2)
                continue;
            uint16_t old_port = rd16(packet + l4 + 2 * i);
            uint16_t new_port = (uint16_t)ports[i];
            if (old_port == new_port)
                continue;
            wr16(packet + l4 + 2 * i, new_port);
            if (has_l4_csum && !partial && !udp_no_csum)
                update16_at(packet + l4 + (size_t)csum_at, old_port, new_port);
        }
    } else if (proto == 1) {
        int32_t identifier = sport >= 0 ? sport : dport;
        if (identifier >= 0 && len >= l4 + 6) {
            uint16_t old_id = rd16(packet + l4 + 4);
            if (old_id != (uint16_t)identifier) {
                wr16(packet + l4 + 4, (uint16_t)identifier);
                update16_at(packet + l4 + 2, old_id, (uint16_t)identifier);
            }
        }
    }
    /* RFC 768: a computed UDP checksum of zero is sent as all ones. */
    if (proto == 17 && has_l4_csum && !partial && !udp_no_csum && rd16(packet + l4 + 6) == 0)
        wr16(packet + l4 + 6, 0xffffu);
    return VS_NAT_OK;
}
