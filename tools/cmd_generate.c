/* placeholder until this command lands; replaced by its real implementation. */
#include <stdio.h>

#include "mls_cli.h"

int mls_cmd_generate(int argc, char **argv)
{
    fprintf(stderr, "mlaserve: '%s' is not built yet\n", argv[0]);
    return 1;
}
