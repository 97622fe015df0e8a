/* main_decode.c - mlaserve-decode: a decode (or, with --role, any) node. */
#include "node.h"

int main(int argc, char **argv)
{
    return mls_node_cli(argc, argv, MLS_NODE_ROLE_DECODE);
}
