/* The C side of vswitch's fast path. Every function here has a pure-Python twin in
 * vswitch/accel/pure.py with the same signature; tests hold them equal. */
#include <stddef.h>
#include <stdint.h>

uint32_t vs_sum16(const uint8_t *data, size_t len, uint32_t initial);
uint16_t vs_checksum(const uint8_t *data, size_t len);
