/*
 * main_prefill.c - mlaserve-prefill: a prefill node (or, with --role, any
 * role). The daemons are where the roles are composed: node/ runs whichever
 * of prefill_node/ and decode_node/ the configured role needs.
 */
#include "decode.h"
#include "prefill.h"

int main(int argc, char **argv)
{
    static const mls_node_roles roles = {.prefill = &mls_prefill_role, .decode = &mls_decode_role};

    return mls_node_cli(argc, argv, MLS_NODE_ROLE_PREFILL, &roles);
}
