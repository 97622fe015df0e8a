/*
 * decode_internal.h - the decode role's state, shared by its loop side
 * (decode_requests.c) and its compute side (decode_batch.c).
 */
#ifndef MLS_DECODE_INTERNAL_H
#define MLS_DECODE_INTERNAL_H

#include "decode.h"

typedef struct {
    node_job *running; /* compute: the batch, linked by next_q */
    node_job *waiting; /* compute: ready, waiting for a batch slot (FIFO) */
} decode_state;

/* decode_batch.c (compute thread) */
void decode_compute_accept(mls_node *n, node_job *job);
bool decode_compute_busy(mls_node *n);
void decode_compute_turn(mls_node *n);
void decode_compute_drain(mls_node *n);

#endif
