/*
 * decode.h - the decode role of an mlaserve node.
 *
 * decode_node/ owns the decode side of a request: the KV pool in transport
 * memory (so prefill nodes put rows straight into it) and its reservations,
 * admission of KV the transport verified, and the continuous batch on the
 * compute thread (sequences join at step boundaries, leave when finished or
 * cancelled, pages go back at once). On a colocated node it runs the
 * sequences the prefill role hands over. It plugs into node/ through
 * node_role.h and may include common/, proto/, transport/, engine/ and node/;
 * never prefill_node/ or router/.
 */
#ifndef MLS_DECODE_H
#define MLS_DECODE_H

#include "node_role.h"

extern const node_role_ops mls_decode_role;

#endif
