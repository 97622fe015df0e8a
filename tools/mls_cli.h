/*
 * mls_cli.h - the subcommands of the `mlaserve` CLI.
 *
 * Each returns the process exit status (0 ok, 1 failure, 2 usage error) and
 * prints its own --help. argv[0] is the subcommand's name.
 */
#ifndef MLS_CLI_H
#define MLS_CLI_H

int mls_cmd_generate(int argc, char **argv);       /* tools/cmd_generate.c */
int mls_cmd_genmodel(int argc, char **argv);       /* tools/cmd_genmodel.c */
int mls_cmd_kvsize(int argc, char **argv);         /* tools/cmd_kvsize.c */
int mls_cmd_tokenize(int argc, char **argv);       /* tools/cmd_tokenize.c */
int mls_cmd_cluster(int argc, char **argv);        /* tools/cmd_cluster.c */
int mls_cmd_bench_kernels(int argc, char **argv);  /* bench/bench_kernels.c */
int mls_cmd_bench_kvxfer(int argc, char **argv);   /* bench/bench_kvxfer.c */
int mls_cmd_bench_serve(int argc, char **argv);    /* bench/bench_serve.c */

#endif
