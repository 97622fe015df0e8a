/*
 * prefill.h - the prefill role of an mlaserve node.
 *
 * prefill_node/ owns what a prefill node does with a PrefillRequest: its job
 * queue on the compute thread, chunked prefill into a local pool, each
 * layer's rows shipped to the decode node's pages as soon as the layer is
 * computed (transport/), the first token, and the transfer's completion. On a
 * colocated node it hands the prefilled sequence to the decode role through
 * the runtime instead. It plugs into node/ through node_role.h and may
 * include common/, proto/, transport/, engine/ and node/; never decode_node/
 * or router/.
 */
#ifndef MLS_PREFILL_H
#define MLS_PREFILL_H

#include "node_role.h"

extern const node_role_ops mls_prefill_role;

#endif
