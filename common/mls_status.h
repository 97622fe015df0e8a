/*
 * mls_status.h - the one status type of mlaserve.
 *
 * Every fallible function returns an mls_status. The list below is the only
 * place codes are defined; names and messages are generated from it. Codes are
 * grouped by blast radius, so a caller can decide what to do from the group:
 *
 *   REQUEST  bad input from the caller: reply with an error, nothing else moves
 *   PEER     a peer or link failed: retry or reroute the work
 *   NODE     this node cannot serve (out of memory, bad model): drain it
 *   FATAL    a broken invariant: the process state can no longer be trusted
 *
 * common/ owns what every component shares: this status type, logging,
 * counted allocation and the growable buffer, number formats, the KV layout
 * codec, framing, helper processes. It includes nothing of the project's
 * other folders.
 */
#ifndef MLS_STATUS_H
#define MLS_STATUS_H

/* X(name, group, message) */
#define MLS_STATUS_LIST(X)                                                        \
    X(OK,                 OK,      "success")                                     \
    X(ERR_INVALID_ARG,    REQUEST, "invalid argument")                            \
    X(ERR_PARSE,          REQUEST, "malformed input")                             \
    X(ERR_TOO_LARGE,      REQUEST, "input exceeds a configured limit")            \
    X(ERR_NOT_FOUND,      REQUEST, "not found")                                   \
    X(ERR_UNSUPPORTED,    REQUEST, "unsupported feature or format")               \
    X(ERR_CANCELED,       REQUEST, "canceled")                                    \
    X(ERR_BUSY,           REQUEST, "resource exhausted, retry later")             \
    X(ERR_TIMED_OUT,      PEER,    "timed out")                                   \
    X(ERR_PEER_DEAD,      PEER,    "peer died or connection lost")                \
    X(ERR_PEER_MISMATCH,  PEER,    "peer layout or protocol mismatch")            \
    X(ERR_CHECKSUM,       PEER,    "checksum mismatch")                           \
    X(ERR_IO,             NODE,    "I/O error")                                   \
    X(ERR_NO_MEMORY,      NODE,    "out of memory")                               \
    X(ERR_BAD_MODEL,      NODE,    "model files are invalid")                     \
    X(ERR_NO_DEVICE,      NODE,    "no usable device")                            \
    X(ERR_INTERNAL,       FATAL,   "internal error")

typedef enum {
#define MLS_STATUS_ENUM_(name, group, msg) MLS_##name,
    MLS_STATUS_LIST(MLS_STATUS_ENUM_)
#undef MLS_STATUS_ENUM_
    MLS_STATUS_COUNT
} mls_status;

typedef enum {
    MLS_STATUS_GROUP_OK,
    MLS_STATUS_GROUP_REQUEST,
    MLS_STATUS_GROUP_PEER,
    MLS_STATUS_GROUP_NODE,
    MLS_STATUS_GROUP_FATAL,
} mls_status_group;

/* "ERR_PARSE"; never NULL, "UNKNOWN" for out-of-range values. */
const char *mls_status_name(mls_status st);
/* "malformed input"; never NULL. */
const char *mls_status_message(mls_status st);
mls_status_group mls_status_group_of(mls_status st);

/*
 * A caller-owned buffer for the one human-readable cause of a failure
 * ("model.safetensors: tensor 'lm_head.weight': shape [1024,64], want [1024,32]").
 * Functions that take one fill it only when they return an error; NULL is fine.
 */
typedef struct {
    char msg[512];
} mls_err;

void mls_err_set(mls_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
