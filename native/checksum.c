/* Internet checksum (RFC 1071). Reads exactly `len` bytes of `data`; allocates nothing. */
#include <stddef.h>
#include <stdint.h>
#include "vswitch_native.h"

uint32_t vs_sum16(const uint8_t *data, size_t len, uint32_t initial)
{
    uint64_t sum = initial;
    size_t i = 0;
    for (; i + 1 < len; i += 2)
        sum += ((uint32_t)data[i] << 8) | data[i + 1];
    if (i < len)
        sum += (uint32_t)data[i] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint32_t)sum;
}

uint16_t vs_checksum(const uint8_t *data, size_t len)
{
    return (uint16_t)(~vs_sum16(data, len, 0) & 0xffff);
}
