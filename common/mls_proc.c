/*
 * mls_proc.c - see mls_proc.h.
 */
#include "mls_proc.h"

#include <errno.h>
#include <spawn.h>
#include <unistd.h>

extern char **environ;

int mls_spawn_piped(char *const *argv, char *const *envp, bool search_path, pid_t *pid_p,
                    int *out_fd_p)
{
    posix_spawn_file_actions_t fa;
    int fds[2], rc;

    if (pipe(fds) != 0) {
        return errno;
    }
    rc = posix_spawn_file_actions_init(&fa);
    if (rc == 0) {
        char *const *env = envp != NULL ? envp : environ;
        rc = posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
        if (rc == 0) {
            rc = posix_spawn_file_actions_addclose(&fa, fds[0]);
        }
        if (rc == 0) {
            rc = search_path ? posix_spawnp(pid_p, argv[0], &fa, NULL, argv, env)
                             : posix_spawn(pid_p, argv[0], &fa, NULL, argv, env);
        }
        posix_spawn_file_actions_destroy(&fa);
    }
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        return rc;
    }
    *out_fd_p = fds[0];
    return 0;
}
