/*
 * mlaserve.c - the `mlaserve` command line: one binary, several subcommands.
 *
 * tools/ is where the components are put together into programs: the
 * `mlaserve` CLI (generate, genmodel, kv-size, tokenize, cluster, bench) and the node
 * daemons' entry points (main_prefill.c, main_decode.c compose node/ with the
 * prefill and decode roles). It may include any component; no component
 * includes tools/ (bench/ is compiled into the CLI and may too).
 */
#include <stdio.h>
#include <string.h>

#include "mls_cli.h"

typedef struct {
    const char *name;
    const char *sub;  /* second word, for "bench kernels"; NULL when none */
    int (*fn)(int argc, char **argv);
    const char *summary;
} mls_cli_command;

static const mls_cli_command mls_cli_commands[] = {
    {"generate", NULL, mls_cmd_generate, "run a model on prompt ids and print the generated ids"},
    {"genmodel", NULL, mls_cmd_genmodel, "write a random-weight checkpoint in Hugging Face layout"},
    {"kv-size", NULL, mls_cmd_kvsize, "KV bytes one sequence holds at a context, per layer kind"},
    {"tokenize", NULL, mls_cmd_tokenize, "encode JSON lines of text or chat messages to token ids"},
    {"cluster", NULL, mls_cmd_cluster, "start a local cluster: router + prefill/decode nodes (cluster up)"},
    {"bench", "kernels", mls_cmd_bench_kernels, "CPU kernel bandwidth/throughput vs measured memory bandwidth"},
    {"bench", "kvxfer", mls_cmd_bench_kvxfer, "KV transfer bandwidth over UCX vs ucx_perftest"},
    {"bench", "serve", mls_cmd_bench_serve, "load an OpenAI endpoint: TTFT/TPOT/ITL, throughput, goodput"},
};

static void mls_cli_usage(FILE *out)
{
    fprintf(out, "usage: mlaserve <command> [options]   (mlaserve <command> --help for details)\n\n"
                 "commands:\n");
    for (size_t i = 0; i < sizeof(mls_cli_commands) / sizeof(mls_cli_commands[0]); i++) {
        const mls_cli_command *c = &mls_cli_commands[i];
        char name[64];
        snprintf(name, sizeof(name), "%s%s%s", c->name, c->sub ? " " : "", c->sub ? c->sub : "");
        fprintf(out, "  %-16s %s\n", name, c->summary);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        mls_cli_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof(mls_cli_commands) / sizeof(mls_cli_commands[0]); i++) {
        const mls_cli_command *c = &mls_cli_commands[i];
        if (strcmp(argv[1], c->name) != 0) {
            continue;
        }
        if (c->sub == NULL) {
            return c->fn(argc - 1, argv + 1);
        }
        if (argc >= 3 && strcmp(argv[2], c->sub) == 0) {
            return c->fn(argc - 2, argv + 2);
        }
    }
    fprintf(stderr, "mlaserve: unknown command '%s%s%s'\n", argv[1], argc >= 3 ? " " : "",
            argc >= 3 ? argv[2] : "");
    mls_cli_usage(stderr);
    return 2;
}
