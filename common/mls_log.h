/*
 * mls_log.h - level-gated logging.
 *
 * The macros test the level before evaluating their arguments, so a disabled
 * debug line costs one comparison. Log once, where the error is found, with the
 * request id and the exact cause. Output goes to stderr, one line per call.
 * The level comes from mls_log_set_level() or MLS_LOG_LEVEL (error, warn, info,
 * debug, trace) read at the first call.
 */
#ifndef MLS_LOG_H
#define MLS_LOG_H

typedef enum {
    MLS_LOG_LEVEL_ERROR,
    MLS_LOG_LEVEL_WARN,
    MLS_LOG_LEVEL_INFO,
    MLS_LOG_LEVEL_DEBUG,
    MLS_LOG_LEVEL_TRACE,
} mls_log_level;

extern int mls_log_level_current; /* < 0 until initialised from the environment */

int mls_log_level_init(void);
void mls_log_set_level(mls_log_level level);
void mls_log_emit(mls_log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define mls_log_enabled(level_) \
    ((int)(level_) <= (mls_log_level_current >= 0 ? mls_log_level_current : mls_log_level_init()))

#define mls_log(level_, ...)                                                   \
    do {                                                                       \
        if (mls_log_enabled(level_)) {                                         \
            mls_log_emit((level_), __FILE__, __LINE__, __VA_ARGS__);           \
        }                                                                      \
    } while (0)

#define mls_error(...) mls_log(MLS_LOG_LEVEL_ERROR, __VA_ARGS__)
#define mls_warn(...)  mls_log(MLS_LOG_LEVEL_WARN, __VA_ARGS__)
#define mls_info(...)  mls_log(MLS_LOG_LEVEL_INFO, __VA_ARGS__)
#define mls_debug(...) mls_log(MLS_LOG_LEVEL_DEBUG, __VA_ARGS__)
#define mls_trace(...) mls_log(MLS_LOG_LEVEL_TRACE, __VA_ARGS__)

#endif
