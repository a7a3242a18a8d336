/* Flow-key extraction for Ethernet + IPv4 frames: the one hand-written header parser.
 *
 * The key is dst MAC (6) + src MAC (6) + ethertype (2) + IPv4 source (4) + IPv4 destination (4),
 * 22 bytes, the fields the flow cache needs to find a frame's memoised decision. Anything that is
 * not a complete, unfragmented IPv4 packet gets a status instead of a key and goes the slow way;
 * the checks mirror what the construct declarations in vswitch/wire accept, and tests hold the
 * two, and the pure-Python twin, equal. Only bytes below `readable` are read: the length checks
 * come before every access they protect.
 *
 * The batch form takes fixed-size header windows rather than an array of frame pointers: the
 * Python side can cut and join the windows of a burst in one C-speed call, whereas pinning each
 * frame with ffi.from_buffer costs a Python-level call per frame. The key needs only the first
 * offset + 34 bytes; the full length, which the total-length check needs, travels separately.
 */
#include <string.h>
#include "vswitch_native.h"

#define ETH_HLEN 14
#define IPV4_MIN_HLEN 20

static unsigned be16(const uint8_t *p)
{
    return ((unsigned)p[0] << 8) | p[1];
}

int vs_flow_key(const uint8_t *frame, size_t readable, size_t len, size_t offset, uint8_t *key)
{
    if (offset > len || len - offset < ETH_HLEN + IPV4_MIN_HLEN)
        return VS_FK_SHORT;
    /* From here on the frame is long enough; every byte read below lies under
     * offset + ETH_HLEN + IPV4_MIN_HLEN, so that many must be readable. */
    if (readable > len || readable < offset || readable - offset < ETH_HLEN + IPV4_MIN_HLEN)
        return VS_FK_WINDOW;
    const uint8_t *eth = frame + offset;
    if (be16(eth + 12) != 0x0800)
        return VS_FK_NOT_IPV4;
    const uint8_t *ip = eth + ETH_HLEN;
    size_t avail = len - offset - ETH_HLEN;
    if ((ip[0] >> 4) != 4)
        return VS_FK_BAD_VERSION;
    size_t hlen = (size_t)(ip[0] & 0x0f) * 4;
    if (hlen < IPV4_MIN_HLEN || hlen > avail)
        return VS_FK_BAD_IHL;
    size_t total = be16(ip + 2);
    if (total < hlen || total > avail)
        return VS_FK_BAD_TOTAL_LEN;
    if (be16(ip + 6) & 0x3fff) /* MF flag (0x2000) or a fragment offset */
        return VS_FK_FRAGMENT;
    memcpy(key, eth, ETH_HLEN);
    memcpy(key + ETH_HLEN, ip + 12, 8);
    return VS_FK_OK;
}

size_t vs_flow_keys_batch(const uint8_t *windows, size_t stride, const uint64_t *lens, size_t n,
                          size_t offset, uint8_t *keys, uint8_t *status)
{
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t *key = keys + i * VS_FLOW_KEY_LEN;
        size_t len = (size_t)lens[i];
        size_t readable = len < stride ? len : stride;
        int s = vs_flow_key(windows + i * stride, readable, len, offset, key);
        if (s != VS_FK_OK)
            memset(key, 0, VS_FLOW_KEY_LEN);
        else
            ok++;
        status[i] = (uint8_t)s;
    }
    return ok;
}
