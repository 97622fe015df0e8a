/*
 * mls_proto.c - Envelope framing and bounded unpacking (see mls_proto.h).
 */
#include "mls_proto.h"

#include <stdlib.h>
#include <string.h>

#include "mls_alloc.h"
#include "mls_auth.h"
#include "mls_frame.h"

_Static_assert(MLS_PROTO_VERSION == MLASERVE__PROTOCOL_VERSION__PROTOCOL_VERSION_CURRENT,
               "MLS_PROTO_VERSION must mirror PROTOCOL_VERSION_CURRENT in mlaserve.proto");
_Static_assert(MLASERVE__KV_DTYPE__KV_DTYPE_F32 == KVL_DTYPE_F32 + 1 &&
                   MLASERVE__KV_DTYPE__KV_DTYPE_BF16 == KVL_DTYPE_BF16 + 1 &&
                   MLASERVE__KV_DTYPE__KV_DTYPE_FP8 == KVL_DTYPE_FP8 + 1 && KVL_DTYPE_COUNT == 3,
               "KvDtype in mlaserve.proto must mirror kvl_dtype + 1");

struct mls_proto_reader {
    mls_proto_limits lim;
    mls_frame_decoder *dec;
    mls_frame_arena *arena;
    ProtobufCAllocator pb_alloc;    /* draws from arena */
    Mlaserve__Envelope *env;        /* last returned, lives in arena */
    mls_auth_session *session;      /* non-NULL: every frame is sealed */
    uint8_t *plain;                 /* opened payload (plain_cap bytes, mls_alloc NET) */
    size_t plain_cap;
    uint64_t frames_ok;
    uint64_t frames_bad;
};

void mls_proto_limits_default(mls_proto_limits *lim)
{
    lim->max_frame_bytes = MLS_PROTO_DEFAULT_MAX_FRAME_BYTES;
    lim->max_unpacked_bytes = (size_t)MLS_PROTO_DEFAULT_MAX_FRAME_BYTES *
                                  MLS_PROTO_DEFAULT_UNPACK_FACTOR +
                              MLS_PROTO_DEFAULT_UNPACK_SLACK_BYTES;
}

const char *mls_proto_msg_name(Mlaserve__Envelope__MsgCase which)
{
    switch (which) {
    case MLASERVE__ENVELOPE__MSG_REGISTER_NODE:   return "register_node";
    case MLASERVE__ENVELOPE__MSG_REGISTER_ACK:    return "register_ack";
    case MLASERVE__ENVELOPE__MSG_LOAD_REPORT:     return "load_report";
    case MLASERVE__ENVELOPE__MSG_RESERVE:         return "reserve";
    case MLASERVE__ENVELOPE__MSG_RESERVED:        return "reserved";
    case MLASERVE__ENVELOPE__MSG_PREFILL_REQUEST: return "prefill_request";
    case MLASERVE__ENVELOPE__MSG_FIRST_TOKEN:     return "first_token";
    case MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK:     return "token_chunk";
    case MLASERVE__ENVELOPE__MSG_FINISH:          return "finish";
    case MLASERVE__ENVELOPE__MSG_CANCEL:          return "cancel";
    case MLASERVE__ENVELOPE__MSG_ERROR:           return "error";
    case MLASERVE__ENVELOPE__MSG_DRAIN:           return "drain";
    case MLASERVE__ENVELOPE__MSG_HEARTBEAT:       return "heartbeat";
    case MLASERVE__ENVELOPE__MSG_START_DECODE:    return "start_decode";
    case MLASERVE__ENVELOPE__MSG_AUTH_HELLO:      return "auth_hello";
    case MLASERVE__ENVELOPE__MSG_AUTH_PROOF:      return "auth_proof";
    case MLASERVE__ENVELOPE__MSG__NOT_SET:        return "none";
    default:                                      return "unknown";
    }
}

size_t mls_proto_frame_size(const Mlaserve__Envelope *env)
{
    return MLS_FRAME_HEADER_BYTES + mlaserve__envelope__get_packed_size(env);
}

static mls_status mls_proto_frame_check(const Mlaserve__Envelope *env, uint32_t max_frame_bytes,
                                        size_t payload, mls_err *err)
{
    if (env->msg_case == MLASERVE__ENVELOPE__MSG__NOT_SET) {
        mls_err_set(err, "proto: refusing to pack an envelope with no message");
        return MLS_ERR_INVALID_ARG;
    }
    if (payload > max_frame_bytes) {
        mls_err_set(err, "proto: %s message packs into %zu bytes, over the %u-byte frame limit",
                    mls_proto_msg_name(env->msg_case), payload, max_frame_bytes);
        return MLS_ERR_TOO_LARGE;
    }
    return MLS_OK;
}

mls_status mls_proto_frame_pack_into(const Mlaserve__Envelope *env, uint32_t max_frame_bytes,
                                     uint8_t *buf, size_t cap, size_t *frame_len_p, mls_err *err)
{
    size_t payload = mlaserve__envelope__get_packed_size(env);
    mls_status st = mls_proto_frame_check(env, max_frame_bytes, payload, err);

    if (st != MLS_OK) {
        return st;
    }
    if (cap < MLS_FRAME_HEADER_BYTES + payload) {
        mls_err_set(err, "proto: %s frame needs %zu bytes, buffer has %zu",
                    mls_proto_msg_name(env->msg_case), MLS_FRAME_HEADER_BYTES + payload, cap);
        return MLS_ERR_TOO_LARGE;
    }
    mls_frame_header_write((uint32_t)payload, buf);
    if (mlaserve__envelope__pack(env, buf + MLS_FRAME_HEADER_BYTES) != payload) {
        mls_err_set(err, "proto: packed size of %s changed while packing",
                    mls_proto_msg_name(env->msg_case));
        return MLS_ERR_INTERNAL;
    }
    *frame_len_p = MLS_FRAME_HEADER_BYTES + payload;
    return MLS_OK;
}

mls_status mls_proto_frame_pack(const Mlaserve__Envelope *env, uint32_t max_frame_bytes,
                                uint8_t **frame_p, size_t *frame_len_p, mls_err *err)
{
    size_t payload = mlaserve__envelope__get_packed_size(env);
    size_t len;
    uint8_t *buf;
    mls_status st = mls_proto_frame_check(env, max_frame_bytes, payload, err);

    if (st != MLS_OK) {
        return st;
    }
    buf = malloc(MLS_FRAME_HEADER_BYTES + payload);
    if (buf == NULL) {
        mls_err_set(err, "proto: out of memory for a %zu-byte frame", payload);
        return MLS_ERR_NO_MEMORY;
    }
    st = mls_proto_frame_pack_into(env, max_frame_bytes, buf, MLS_FRAME_HEADER_BYTES + payload,
                                   &len, err);
    if (st != MLS_OK) {
        free(buf);
        return st;
    }
    *frame_p = buf;
    *frame_len_p = len;
    return MLS_OK;
}

mls_status mls_proto_frame_pack_sealed(const Mlaserve__Envelope *env, uint32_t max_frame_bytes,
                                       mls_auth_session *session, uint8_t **frame_p,
                                       size_t *frame_len_p, mls_err *err)
{
    size_t payload = mlaserve__envelope__get_packed_size(env);
    size_t sealed = payload + MLS_AUTH_TAG_BYTES;
    uint8_t *buf;
    mls_status st = mls_proto_frame_check(env, max_frame_bytes, sealed, err);

    if (st != MLS_OK) {
        return st;
    }
    buf = malloc(MLS_FRAME_HEADER_BYTES + sealed);
    if (buf == NULL) {
        mls_err_set(err, "proto: out of memory for a %zu-byte frame", sealed);
        return MLS_ERR_NO_MEMORY;
    }
    if (mlaserve__envelope__pack(env, buf + MLS_FRAME_HEADER_BYTES) != payload) {
        mls_err_set(err, "proto: packed size of %s changed while packing",
                    mls_proto_msg_name(env->msg_case));
        free(buf);
        return MLS_ERR_INTERNAL;
    }
    mls_frame_header_write((uint32_t)sealed, buf);
    mls_auth_seal(session, buf + MLS_FRAME_HEADER_BYTES, payload);
    *frame_p = buf;
    *frame_len_p = MLS_FRAME_HEADER_BYTES + sealed;
    return MLS_OK;
}

static void *mls_proto_arena_alloc(void *data, size_t size)
{
    return mls_frame_arena_alloc(data, size);
}

static void mls_proto_arena_free(void *data, void *ptr)
{
    (void)data;
    (void)ptr; /* freed all at once by mls_frame_arena_reset */
}

/* Unpack payload into arena; *env_p lives in arena. */
/* Field numbers are 1 .. 2^29 - 1. protobuf-c keeps a key for field 0 spelled in
 * more than one byte (0x80 0x00) as an unknown field, and would pack it into
 * a frame it then refuses (found by tests/fuzz/fuzz_proto): such a message is
 * refused here, at any depth. */
static bool mls_proto_msg_bad_tag(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;

    for (unsigned i = 0; i < m->n_unknown_fields; i++) {
        if (m->unknown_fields[i].tag == 0 || m->unknown_fields[i].tag > 0x1fffffffu) {
            return true;
        }
    }
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_MESSAGE) {
            continue;
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *v = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t k = 0; k < n; k++) {
                if (mls_proto_msg_bad_tag(v[k])) {
                    return true;
                }
            }
            continue;
        }
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id) {
            continue; /* another member of the oneof is set */
        }
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)(base + f->offset);
        if (sub != NULL && mls_proto_msg_bad_tag(sub)) {
            return true;
        }
    }
    return false;
}

static mls_status mls_proto_unpack(mls_frame_arena *arena, ProtobufCAllocator *pb_alloc,
                                   const uint8_t *payload, size_t len,
                                   Mlaserve__Envelope **env_p, mls_err *err)
{
    Mlaserve__Envelope *env;

    mls_frame_arena_reset(arena);
    env = mlaserve__envelope__unpack(pb_alloc, len, payload);
    if (env == NULL) {
        if (mls_frame_arena_exhausted(arena)) {
            mls_err_set(err, "proto: a %zu-byte frame unpacks into more than %zu bytes", len,
                        mls_frame_arena_cap(arena));
            return MLS_ERR_TOO_LARGE;
        }
        mls_err_set(err, "proto: %zu-byte frame is not a valid mlaserve.Envelope", len);
        return MLS_ERR_PARSE;
    }
    if (env->msg_case == MLASERVE__ENVELOPE__MSG__NOT_SET) {
        mls_err_set(err, "proto: %zu-byte frame holds an envelope with no known message", len);
        return MLS_ERR_PARSE;
    }
    if (mls_proto_msg_bad_tag(&env->base)) {
        mls_err_set(err, "proto: %zu-byte frame holds a field numbered 0 or above 2^29 - 1", len);
        return MLS_ERR_PARSE;
    }
    *env_p = env;
    return MLS_OK;
}

mls_status mls_proto_reader_create(const mls_proto_limits *lim, mls_proto_reader **reader_p,
                                   mls_err *err)
{
    mls_proto_reader *r;
    mls_status st;

    r = mls_alloc(MLS_ALLOC_TAG_NET, sizeof(*r));
    if (r == NULL) {
        mls_err_set(err, "proto reader: out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    if (lim != NULL) {
        r->lim = *lim;
    } else {
        mls_proto_limits_default(&r->lim);
    }
    st = mls_frame_decoder_create(r->lim.max_frame_bytes, &r->dec, err);
    if (st != MLS_OK) {
        goto err_free_reader;
    }
    st = mls_frame_arena_create(r->lim.max_unpacked_bytes, &r->arena, err);
    if (st != MLS_OK) {
        goto err_destroy_decoder;
    }
    r->pb_alloc.alloc = mls_proto_arena_alloc;
    r->pb_alloc.free = mls_proto_arena_free;
    r->pb_alloc.allocator_data = r->arena;
    *reader_p = r;
    return MLS_OK;

err_destroy_decoder:
    mls_frame_decoder_destroy(r->dec);
err_free_reader:
    mls_free(MLS_ALLOC_TAG_NET, r, sizeof(*r));
    return st;
}

void mls_proto_reader_destroy(mls_proto_reader *r)
{
    if (r == NULL) {
        return;
    }
    mls_free(MLS_ALLOC_TAG_NET, r->plain, r->plain_cap);
    mls_frame_arena_destroy(r->arena);
    mls_frame_decoder_destroy(r->dec);
    mls_free(MLS_ALLOC_TAG_NET, r, sizeof(*r));
}

/* Open a sealed frame into r->plain; *frame_p and *len_p then name the plaintext. */
static mls_status mls_proto_reader_open(mls_proto_reader *r, const uint8_t **frame_p,
                                        size_t *len_p, mls_err *err)
{
    size_t need = *len_p > MLS_AUTH_TAG_BYTES ? *len_p - MLS_AUTH_TAG_BYTES : 1;
    mls_status st;

    if (r->plain_cap < need) {
        size_t ncap = r->plain_cap * 2 > need ? r->plain_cap * 2 : need;
        uint8_t *nb = mls_alloc(MLS_ALLOC_TAG_NET, ncap);
        if (nb == NULL) {
            mls_err_set(err, "proto: out of memory opening a %zu-byte frame", *len_p);
            return MLS_ERR_NO_MEMORY;
        }
        mls_free(MLS_ALLOC_TAG_NET, r->plain, r->plain_cap);
        r->plain = nb;
        r->plain_cap = ncap;
    }
    st = mls_auth_open(r->session, *frame_p, *len_p, r->plain, err);
    if (st != MLS_OK) {
        return st;
    }
    *frame_p = r->plain;
    *len_p -= MLS_AUTH_TAG_BYTES;
    return MLS_OK;
}

void mls_proto_reader_set_max_frame(mls_proto_reader *r, uint32_t max_frame_bytes)
{
    mls_frame_decoder_set_max(r->dec, max_frame_bytes);
}

void mls_proto_reader_set_session(mls_proto_reader *r, mls_auth_session *session)
{
    r->session = session;
}

mls_status mls_proto_reader_next(mls_proto_reader *r, const uint8_t **data, size_t *len,
                                 Mlaserve__Envelope **env_p, mls_err *err)
{
    const uint8_t *frame;
    size_t frame_len;
    mls_status st;

    *env_p = NULL;
    r->env = NULL;
    st = mls_frame_decoder_next(r->dec, data, len, &frame, &frame_len, err);
    if (st != MLS_OK) {
        r->frames_bad++;
        return st;
    }
    if (frame == NULL) {
        return MLS_OK;
    }
    if (r->session != NULL) {
        st = mls_proto_reader_open(r, &frame, &frame_len, err);
        if (st != MLS_OK) {
            r->frames_bad++;
            return st;
        }
    }
    st = mls_proto_unpack(r->arena, &r->pb_alloc, frame, frame_len, &r->env, err);
    if (st != MLS_OK) {
        r->frames_bad++;
        mls_frame_arena_reset(r->arena);
        return st;
    }
    r->frames_ok++;
    *env_p = r->env;
    return MLS_OK;
}

uint64_t mls_proto_reader_frames_ok(const mls_proto_reader *r)
{
    return r->frames_ok;
}

uint64_t mls_proto_reader_frames_bad(const mls_proto_reader *r)
{
    return r->frames_bad;
}

mls_status mls_proto_envelope_check(const uint8_t *payload, size_t len, size_t cap,
                                    Mlaserve__Envelope__MsgCase *which_p, mls_err *err)
{
    mls_frame_arena *arena;
    ProtobufCAllocator pb_alloc;
    Mlaserve__Envelope *env;
    mls_status st;

    st = mls_frame_arena_create(cap, &arena, err);
    if (st != MLS_OK) {
        return st;
    }
    pb_alloc.alloc = mls_proto_arena_alloc;
    pb_alloc.free = mls_proto_arena_free;
    pb_alloc.allocator_data = arena;
    st = mls_proto_unpack(arena, &pb_alloc, payload, len, &env, err);
    if (st == MLS_OK) {
        *which_p = env->msg_case;
    }
    mls_frame_arena_destroy(arena);
    return st;
}

void mls_proto_error_init(Mlaserve__Envelope *env, Mlaserve__Error *msg, uint64_t request_id,
                          mls_status st, const char *message)
{
    mlaserve__envelope__init(env);
    mlaserve__error__init(msg);
    msg->request_id = request_id;
    msg->status = (int32_t)st;
    msg->status_name = (char *)mls_status_name(st);
    msg->message = (char *)(message != NULL ? message : mls_status_message(st));
    env->msg_case = MLASERVE__ENVELOPE__MSG_ERROR;
    env->error = msg;
}

mls_status mls_proto_status_from_wire(int32_t v)
{
    if (v < 0 || v >= (int32_t)MLS_STATUS_COUNT) {
        return MLS_ERR_INTERNAL;
    }
    return (mls_status)v;
}

Mlaserve__KvDtype mls_proto_kv_dtype_to_wire(kvl_dtype dtype)
{
    if ((unsigned)dtype >= KVL_DTYPE_COUNT) {
        return MLASERVE__KV_DTYPE__KV_DTYPE_UNSPECIFIED;
    }
    return (Mlaserve__KvDtype)(dtype + 1);
}

mls_status mls_proto_kv_dtype_from_wire(Mlaserve__KvDtype v, kvl_dtype *dtype_p)
{
    if ((int)v < 1 || (int)v > (int)KVL_DTYPE_COUNT) {
        return MLS_ERR_INVALID_ARG;
    }
    *dtype_p = (kvl_dtype)(v - 1);
    return MLS_OK;
}

void mls_proto_kv_layout_to_wire(const kvl_layout *layout, uint32_t n_layers, uint8_t *wire,
                                 Mlaserve__KvLayout *msg)
{
    mlaserve__kv_layout__init(msg);
    kvl_layout_encode(layout, wire);
    msg->layout.data = wire;
    msg->layout.len = KVL_WIRE_BYTES;
    msg->n_layers = n_layers;
}

mls_status mls_proto_kv_layout_from_wire(const Mlaserve__KvLayout *msg, kvl_layout *layout_p,
                                         uint32_t *n_layers_p, mls_err *err)
{
    kvl_layout l;
    mls_status st = kvl_layout_decode(msg->layout.data, msg->layout.len, &l, err);

    if (st != MLS_OK) {
        return MLS_ERR_PEER_MISMATCH;
    }
    *layout_p = l;
    *n_layers_p = msg->n_layers;
    return MLS_OK;
}
