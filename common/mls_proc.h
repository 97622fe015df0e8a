/*
 * mls_proc.h - starting a helper process whose standard output we read
 * (benchmarks and tests drive peers and reference tools this way).
 */
#ifndef MLS_PROC_H
#define MLS_PROC_H

#include <stdbool.h>
#include <sys/types.h>

/* Start argv[0] (looked up in PATH when search_path) with envp (NULL: this
 * process's environment), its stdout on a pipe whose read end (blocking, the
 * caller's to close) goes to *out_fd_p. Returns 0, or the errno value of the
 * failed pipe or spawn, with nothing left open. */
int mls_spawn_piped(char *const *argv, char *const *envp, bool search_path, pid_t *pid_p,
                    int *out_fd_p);

#endif /* MLS_PROC_H */
