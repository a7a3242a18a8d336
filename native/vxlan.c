/* VXLAN in the datapath: placeholder until the encapsulation lands (every call declines). */
#include "vswitch_native.h"

uint16_t vs_vxlan_source_port(const uint8_t *flow_key, size_t len, uint64_t seed)
{
    (void)flow_key; (void)len; (void)seed;
    return 0;
}

int64_t vs_vxlan_wrap(const vs_dp_action *a, const uint8_t *vnet, size_t l2_offset,
                      const uint8_t *ip, size_t ip_len, uint16_t ident, uint8_t *out, size_t cap)
{
    (void)a; (void)vnet; (void)l2_offset; (void)ip; (void)ip_len; (void)ident; (void)out; (void)cap;
    return -1;
}

int64_t vs_vxlan_open(const vs_dp_action *a, const uint8_t *frame, size_t len, size_t l2_offset,
                      uint8_t *out, size_t cap)
{
    (void)a; (void)frame; (void)len; (void)l2_offset; (void)out; (void)cap;
    return -1;
}
