/* mls_status.c - names, messages and groups generated from MLS_STATUS_LIST. */
#include "mls_status.h"

#include <stdarg.h>
#include <stdio.h>

static const char *const mls_status_names[] = {
#define MLS_STATUS_NAME_(name, group, msg) #name,
    MLS_STATUS_LIST(MLS_STATUS_NAME_)
#undef MLS_STATUS_NAME_
};
static const char *const mls_status_messages[] = {
#define MLS_STATUS_MSG_(name, group, msg) msg,
    MLS_STATUS_LIST(MLS_STATUS_MSG_)
#undef MLS_STATUS_MSG_
};
static const mls_status_group mls_status_groups[] = {
#define MLS_STATUS_GROUP_(name, group, msg) MLS_STATUS_GROUP_##group,
    MLS_STATUS_LIST(MLS_STATUS_GROUP_)
#undef MLS_STATUS_GROUP_
};

_Static_assert(sizeof(mls_status_names) / sizeof(mls_status_names[0]) == MLS_STATUS_COUNT,
               "status name table out of sync");
_Static_assert(sizeof(mls_status_groups) / sizeof(mls_status_groups[0]) == MLS_STATUS_COUNT,
               "status group table out of sync");

const char *mls_status_name(mls_status st)
{
    return ((unsigned)st < MLS_STATUS_COUNT) ? mls_status_names[st] : "UNKNOWN";
}

const char *mls_status_message(mls_status st)
{
    return ((unsigned)st < MLS_STATUS_COUNT) ? mls_status_messages[st] : "unknown status";
}

mls_status_group mls_status_group_of(mls_status st)
{
    return ((unsigned)st < MLS_STATUS_COUNT) ? mls_status_groups[st] : MLS_STATUS_GROUP_FATAL;
}

void mls_err_set(mls_err *err, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
}
