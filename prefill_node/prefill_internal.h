/*
 * prefill_internal.h - the prefill role's state, shared by its loop side
 * (prefill_requests.c) and its compute side (prefill_compute.c).
 */
#ifndef MLS_PREFILL_INTERNAL_H
#define MLS_PREFILL_INTERNAL_H

#include "prefill.h"

typedef struct {
    node_job *queue; /* compute: prompts waiting, FIFO, linked by next_q */
} prefill_state;

/* prefill_compute.c (compute thread) */
void prefill_compute_accept(mls_node *n, node_job *job);
bool prefill_compute_busy(mls_node *n);
void prefill_compute_turn(mls_node *n);
void prefill_compute_drain(mls_node *n);

#endif
