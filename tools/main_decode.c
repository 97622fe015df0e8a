/*
 * main_decode.c - mlaserve-decode: a decode node (or, with --role, any role;
 * --role colocated composes the prefill and decode roles in one process).
 */
#include "decode.h"
#include "prefill.h"

int main(int argc, char **argv)
{
    static const mls_node_roles roles = {.prefill = &mls_prefill_role, .decode = &mls_decode_role};

    return mls_node_cli(argc, argv, MLS_NODE_ROLE_DECODE, &roles);
}
