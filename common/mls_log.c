/* mls_log.c - stderr sink for the level-gated logging macros. */
#include "mls_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

int mls_log_level_current = -1;

static const char *const mls_log_level_names[] = {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"};

int mls_log_level_init(void)
{
    const char *env = getenv("MLS_LOG_LEVEL");
    int level = MLS_LOG_LEVEL_WARN;

    if (env != NULL) {
        for (int i = 0; i <= MLS_LOG_LEVEL_TRACE; i++) {
            if (strcasecmp(env, mls_log_level_names[i]) == 0) {
                level = i;
            }
        }
    }
    mls_log_level_current = level;
    return level;
}

void mls_log_set_level(mls_log_level level)
{
    mls_log_level_current = (int)level;
}

void mls_log_emit(mls_log_level level, const char *file, int line, const char *fmt, ...)
{
    struct timespec ts;
    char msg[1024];
    va_list ap;
    const char *base = strrchr(file, '/');

    clock_gettime(CLOCK_REALTIME, &ts);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "[%ld.%06ld] %-5s %s:%d %s\n", (long)ts.tv_sec, ts.tv_nsec / 1000,
            mls_log_level_names[level], base ? base + 1 : file, line, msg);
}
