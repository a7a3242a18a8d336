/* The datapath: placeholder so that the module builds; every call fails or declines. */
#include <stdlib.h>
#include "vswitch_native.h"

vs_dp * vs_dp_create(uint32_t flow_capacity, uint32_t upcall_capacity, uint64_t seed)
{
    (void)flow_capacity; (void)upcall_capacity; (void)seed; return NULL;
}

void vs_dp_destroy(vs_dp *dp)
{
    (void)dp; 
}

void vs_dp_set_shared(vs_dp *dp, const vs_dp_shared *shared)
{
    (void)dp; (void)shared; 
}

void vs_dp_set_params(vs_dp *dp, const vs_dp_params *params)
{
    (void)dp; (void)params; 
}

void vs_dp_set_generation(vs_dp *dp, uint64_t generation)
{
    (void)dp; (void)generation; 
}

int vs_dp_port_add(vs_dp *dp, uint32_t port_id, int fd, uint32_t l2_offset, int upcall_all)
{
    (void)dp; (void)port_id; (void)fd; (void)l2_offset; (void)upcall_all; return -1;
}

int vs_dp_port_set_upcall_all(vs_dp *dp, uint32_t port_id, int upcall_all)
{
    (void)dp; (void)port_id; (void)upcall_all; return -1;
}

int vs_dp_port_del(vs_dp *dp, uint32_t port_id)
{
    (void)dp; (void)port_id; return -1;
}

int vs_dp_port_counters(vs_dp *dp, uint32_t port_id, vs_dp_counters *out)
{
    (void)dp; (void)port_id; (void)out; return -1;
}

int vs_dp_install(vs_dp *dp, const uint8_t *key, const vs_dp_action *action)
{
    (void)dp; (void)key; (void)action; return -1;
}

void vs_dp_flush(vs_dp *dp)
{
    (void)dp; 
}

void vs_dp_stats_get(vs_dp *dp, vs_dp_stats *out)
{
    (void)dp; (void)out; 
}

int64_t vs_dp_process(vs_dp *dp, uint32_t in_port, const uint8_t *frame, size_t len, double now, uint8_t *out, size_t out_cap, uint32_t *out_port)
{
    (void)dp; (void)in_port; (void)frame; (void)len; (void)now; (void)out; (void)out_cap; (void)out_port; return -1;
}

int vs_dp_start(vs_dp *dp)
{
    (void)dp; return -1;
}

void vs_dp_stop(vs_dp *dp)
{
    (void)dp; 
}

int vs_dp_upcall_fd(vs_dp *dp)
{
    (void)dp; return -1;
}

int64_t vs_dp_upcall_take(vs_dp *dp, uint32_t *port, uint8_t *buf, size_t cap)
{
    (void)dp; (void)port; (void)buf; (void)cap; return -1;
}
