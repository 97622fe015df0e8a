/* main_prefill.c - mlaserve-prefill: a prefill (or, with --role, any) node. */
#include "node.h"

int main(int argc, char **argv)
{
    return mls_node_cli(argc, argv, MLS_NODE_ROLE_PREFILL);
}
