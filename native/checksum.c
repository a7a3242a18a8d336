/* Internet checksum (RFC 1071) and its incremental update (RFC 1624).
 *
 * The one's-complement sum does not depend on byte order (RFC 1071, section 2(B)): summing the
 * buffer as native little-endian 16-bit words and swapping the folded result gives the same value
 * as summing big-endian words. That lets the bulk loop load eight bytes at a time, which is what
 * makes 64 KB TSO segments cheap. Every function reads exactly `len` bytes and allocates nothing.
 */
#include <string.h>
#include "vswitch_native.h"

static uint32_t fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffffu) + (sum >> 16);
    return (uint32_t)sum;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* Sum of the buffer taken as little-endian 16-bit words, folded; a trailing odd byte is the low
 * byte of a last word, which after the final swap is the high byte, as RFC 1071 pads. */
static uint32_t sum_native(const uint8_t *data, size_t len)
{
    uint64_t acc = 0;
    size_t i = 0;
    /* Each step adds at most 2^33, so the accumulator cannot overflow below 2^30 steps (8 GiB);
     * folding every 2^20 steps keeps it safe for any length. */
    size_t steps = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, data + i, 8);
        acc += (w & 0xffffffffu) + (w >> 32);
        if (++steps == (1u << 20)) {
            acc = fold(acc);
            steps = 0;
        }
    }
    for (; i + 2 <= len; i += 2)
        acc += (uint32_t)data[i] | ((uint32_t)data[i + 1] << 8);
    if (i < len)
        acc += data[i];
    return fold(acc);
}

uint32_t vs_sum16(const uint8_t *data, size_t len, uint32_t initial)
{
    uint32_t s = sum_native(data, len);
    s = ((s & 0xffu) << 8) | (s >> 8);
    return fold((uint64_t)s + initial);
}
#else
uint32_t vs_sum16(const uint8_t *data, size_t len, uint32_t initial)
{
    uint64_t sum = initial;
    size_t i = 0;
    for (; i + 1 < len; i += 2)
        sum += ((uint32_t)data[i] << 8) | data[i + 1];
    if (i < len)
        sum += (uint32_t)data[i] << 8;
    return fold(sum);
}
#endif

uint16_t vs_checksum(const uint8_t *data, size_t len)
{
    return (uint16_t)(~vs_sum16(data, len, 0) & 0xffffu);
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). Unlike eqn. 2 it never produces 0xFFFF from a
 * checksum field whose data is not all zero, so it agrees bit for bit with a recomputation. */
uint16_t vs_checksum_update16(uint16_t old_csum, uint16_t old_word, uint16_t new_word)
{
    uint64_t sum = (uint16_t)~old_csum;
    sum += (uint16_t)~old_word;
    sum += new_word;
    return (uint16_t)(~fold(sum) & 0xffffu);
}

uint16_t vs_checksum_update32(uint16_t old_csum, uint32_t old_value, uint32_t new_value)
{
    uint64_t sum = (uint16_t)~old_csum;
    sum += (uint16_t)~(old_value >> 16);
    sum += (uint16_t)~(old_value & 0xffffu);
    sum += new_value >> 16;
    sum += new_value & 0xffffu;
    return (uint16_t)(~fold(sum) & 0xffffu);
}

static uint64_t pseudo_sum(const uint8_t *src_ip, const uint8_t *dst_ip, uint8_t proto,
                           uint32_t length)
{
    uint64_t sum = 0;
    sum += ((uint32_t)src_ip[0] << 8) | src_ip[1];
    sum += ((uint32_t)src_ip[2] << 8) | src_ip[3];
    sum += ((uint32_t)dst_ip[0] << 8) | dst_ip[1];
    sum += ((uint32_t)dst_ip[2] << 8) | dst_ip[3];
    sum += proto;
    /* The IPv4 pseudo-header carries a 16-bit length; a GSO super-segment may be longer, and
     * adding both halves is what the kernel's csum_tcpudp_magic does with its 32-bit length. */
    sum += length >> 16;
    sum += length & 0xffffu;
    return sum;
}

uint16_t vs_pseudo_header_sum(const uint8_t *src_ip, const uint8_t *dst_ip, uint8_t proto,
                              uint32_t length)
{
    return (uint16_t)fold(pseudo_sum(src_ip, dst_ip, proto, length));
}

/* proto < 0 means "no pseudo-header" (ICMP). The length in the pseudo-header is the segment's. */
uint16_t vs_l4_checksum(const uint8_t *src_ip, const uint8_t *dst_ip, int proto,
                        const uint8_t *segment, size_t len)
{
    uint32_t initial = 0;
    if (proto >= 0)
        initial = fold(pseudo_sum(src_ip, dst_ip, (uint8_t)proto, (uint32_t)len));
    return (uint16_t)(~vs_sum16(segment, len, initial) & 0xffffu);
}
