/*
 * test_proto.c - control-plane messages and their framing: every Envelope
 * message round-trips with every field set; the frame decoder reassembles
 * frames fed byte by byte and in random chunks; oversized frames are refused
 * before buffering; garbage, truncated and empty payloads are refused with a
 * clear error and the stream stays in sync; the unpack arena cap holds.
 */
#include <stdlib.h>
#include <string.h>

#include "mls_alloc.h"
#include "mls_frame.h"
#include "mls_proto.h"
#include "mls_test.h"

#define N_MSG 16

/* ---- building one envelope of each kind, every field set ----------------- */

typedef struct {
    Mlaserve__Envelope env[N_MSG];
    Mlaserve__Register reg;
    Mlaserve__KvLayout layout;
    uint8_t layout_wire[KVL_WIRE_BYTES];
    Mlaserve__Capacity cap;
    Mlaserve__RegisterAck ack;
    Mlaserve__LoadReport load;
    Mlaserve__Reserve reserve;
    Mlaserve__Reserved reserved;
    Mlaserve__PrefillRequest prefill;
    Mlaserve__SamplingParams sampling;
    Mlaserve__TokenIds stop_seq[2];
    Mlaserve__TokenIds *stop_seq_p[2];
    Mlaserve__FirstToken first;
    Mlaserve__TopLogprobs first_top;
    Mlaserve__TokenChunk chunk;
    Mlaserve__TopLogprobs chunk_top[3];
    Mlaserve__TopLogprobs *chunk_top_p[3];
    Mlaserve__Finish finish;
    Mlaserve__Cancel cancel;
    Mlaserve__Error error;
    Mlaserve__Drain drain;
    Mlaserve__Heartbeat heartbeat;
    Mlaserve__StartDecode start;
    Mlaserve__AuthHello hello;
    Mlaserve__AuthProof proof;
    uint8_t nonce[MLS_AUTH_NONCE_BYTES];
    uint8_t proof_bytes[MLS_AUTH_PROOF_BYTES];
    uint8_t ucx_addr[37];
    uint8_t decode_addr[19];
    uint8_t kv_token[32];
    uint32_t page_ids[5];
    int32_t prompt[7];
    int32_t stop_ids[2];
    int32_t seq_a[2], seq_b[3];
    uint64_t hashes[2];
    int32_t top_ids[3];
    float top_lps[3];
    int32_t chunk_ids[3];
    float chunk_lps[3];
} msg_set;

static void msg_set_build(msg_set *m)
{
    int i;

    memset(m, 0, sizeof(*m));
    for (i = 0; i < N_MSG; i++) {
        mlaserve__envelope__init(&m->env[i]);
    }
    for (i = 0; i < (int)sizeof(m->ucx_addr); i++) {
        m->ucx_addr[i] = (uint8_t)(i * 7 + 1);
    }
    for (i = 0; i < (int)sizeof(m->decode_addr); i++) {
        m->decode_addr[i] = (uint8_t)(200 - i);
    }
    for (i = 0; i < (int)sizeof(m->kv_token); i++) {
        m->kv_token[i] = (uint8_t)(i * 13 + 5);
    }

    mlaserve__kv_layout__init(&m->layout);
    {
        kvl_layout l;
        (void)kvl_layout_init(KVL_DTYPE_FP8, 512, 64, 0x1234567890abcdefull, &l);
        mls_proto_kv_layout_to_wire(&l, 61, m->layout_wire, &m->layout);
    }
    mlaserve__capacity__init(&m->cap);
    m->cap.kv_pages_total = 4096;
    m->cap.kv_pages_free = 4000;
    m->cap.page_bytes = 656u * 64u * 61u;
    m->cap.kv_dtype = MLASERVE__KV_DTYPE__KV_DTYPE_FP8;
    m->cap.max_batch = 128;
    m->cap.max_seq_len = 32768;
    m->cap.max_prefill_tokens = 8192;
    mlaserve__register__init(&m->reg);
    m->reg.role = MLASERVE__ROLE__ROLE_DECODE;
    m->reg.node_id = "decode-0";
    m->reg.protocol_version = MLS_PROTO_VERSION;
    m->reg.model_fingerprint = 0x1234567890abcdefull;
    m->reg.model_name = "deepseek-tiny";
    m->reg.kv_layout = &m->layout;
    m->reg.capacity = &m->cap;
    m->reg.ucx_worker_address.data = m->ucx_addr;
    m->reg.ucx_worker_address.len = sizeof(m->ucx_addr);
    m->reg.host = "127.0.0.1";
    m->reg.metrics_port = 9101;
    m->reg.pid = 4242;
    m->env[0].msg_case = MLASERVE__ENVELOPE__MSG_REGISTER_NODE;
    m->env[0].register_node = &m->reg;

    mlaserve__register_ack__init(&m->ack);
    m->ack.accepted = 1;
    m->ack.node_index = 3;
    m->ack.protocol_version = MLS_PROTO_VERSION;
    m->ack.heartbeat_interval_ms = 1000;
    m->ack.dead_after_ms = 3000;
    m->ack.status = MLS_ERR_PEER_MISMATCH;
    m->ack.message = "fingerprint differs";
    m->env[1].msg_case = MLASERVE__ENVELOPE__MSG_REGISTER_ACK;
    m->env[1].register_ack = &m->ack;

    mlaserve__load_report__init(&m->load);
    m->load.seq = 99;
    m->load.queue_depth = 4;
    m->load.running = 17;
    m->load.waiting = 2;
    m->load.kv_pages_free = 1234;
    m->load.kv_pages_used = 2862;
    m->load.kv_pages_reserved = 12;
    m->load.tokens_per_s = 1523.25;
    m->load.sent_unix_ns = 1700000000123456789ull;
    m->env[2].msg_case = MLASERVE__ENVELOPE__MSG_LOAD_REPORT;
    m->env[2].load_report = &m->load;

    mlaserve__reserve__init(&m->reserve);
    m->reserve.request_id = 0xfeedfacecafeull;
    m->reserve.n_pages = 5;
    m->reserve.lease_ms = 2500;
    m->reserve.kv_token.data = m->kv_token;
    m->reserve.kv_token.len = sizeof(m->kv_token);
    m->env[3].msg_case = MLASERVE__ENVELOPE__MSG_RESERVE;
    m->env[3].reserve = &m->reserve;

    for (i = 0; i < 5; i++) {
        m->page_ids[i] = (uint32_t)(1000 + 3 * i);
    }
    mlaserve__reserved__init(&m->reserved);
    m->reserved.request_id = 0xfeedfacecafeull;
    m->reserved.n_page_ids = 5;
    m->reserved.page_ids = m->page_ids;
    m->reserved.decode_address.data = m->decode_addr;
    m->reserved.decode_address.len = sizeof(m->decode_addr);
    m->reserved.lease_ms = 2000;
    m->reserved.status = MLS_ERR_BUSY;
    m->reserved.message = "partially granted";
    m->env[4].msg_case = MLASERVE__ENVELOPE__MSG_RESERVED;
    m->env[4].reserved = &m->reserved;

    for (i = 0; i < 7; i++) {
        m->prompt[i] = 100000 + i * 17;
    }
    m->stop_ids[0] = 1;
    m->stop_ids[1] = 128001;
    m->seq_a[0] = 5;
    m->seq_a[1] = 6;
    m->seq_b[0] = 7;
    m->seq_b[1] = 8;
    m->seq_b[2] = 9;
    for (i = 0; i < 2; i++) {
        mlaserve__token_ids__init(&m->stop_seq[i]);
        m->stop_seq_p[i] = &m->stop_seq[i];
    }
    m->stop_seq[0].n_ids = 2;
    m->stop_seq[0].ids = m->seq_a;
    m->stop_seq[1].n_ids = 3;
    m->stop_seq[1].ids = m->seq_b;
    mlaserve__sampling_params__init(&m->sampling);
    m->sampling.temperature = 0.7f;
    m->sampling.top_p = 0.95f;
    m->sampling.top_k = 40;
    m->sampling.seed = 1234567;
    m->sampling.has_seed = 1;
    m->sampling.max_tokens = 256;
    m->sampling.n_stop_token_ids = 2;
    m->sampling.stop_token_ids = m->stop_ids;
    m->sampling.n_stop_sequences = 2;
    m->sampling.stop_sequences = m->stop_seq_p;
    m->sampling.ignore_eos = 1;
    m->sampling.logprobs = 1;
    m->sampling.top_logprobs = 5;
    m->hashes[0] = 0x1111222233334444ull;
    m->hashes[1] = 0x5555666677778888ull;
    mlaserve__prefill_request__init(&m->prefill);
    m->prefill.request_id = 77;
    m->prefill.n_prompt_token_ids = 7;
    m->prefill.prompt_token_ids = m->prompt;
    m->prefill.sampling = &m->sampling;
    m->prefill.decode_node_id = "decode-1";
    m->prefill.decode_address.data = m->decode_addr;
    m->prefill.decode_address.len = sizeof(m->decode_addr);
    m->prefill.n_page_ids = 5;
    m->prefill.page_ids = m->page_ids;
    m->prefill.n_generated = 3;
    m->prefill.deadline_ms = 30000;
    m->prefill.n_block_hashes = 2;
    m->prefill.kv_token.data = m->kv_token;
    m->prefill.kv_token.len = sizeof(m->kv_token);
    m->prefill.block_hashes = m->hashes;
    m->env[5].msg_case = MLASERVE__ENVELOPE__MSG_PREFILL_REQUEST;
    m->env[5].prefill_request = &m->prefill;

    for (i = 0; i < 3; i++) {
        m->top_ids[i] = 10 + i;
        m->top_lps[i] = -0.5f * (float)(i + 1);
        m->chunk_ids[i] = 2000 + i;
        m->chunk_lps[i] = -0.25f * (float)(i + 1);
        mlaserve__top_logprobs__init(&m->chunk_top[i]);
        m->chunk_top[i].n_token_ids = (size_t)(i + 1);
        m->chunk_top[i].token_ids = m->top_ids;
        m->chunk_top[i].n_logprobs = (size_t)(i + 1);
        m->chunk_top[i].logprobs = m->top_lps;
        m->chunk_top_p[i] = &m->chunk_top[i];
    }
    mlaserve__top_logprobs__init(&m->first_top);
    m->first_top.n_token_ids = 3;
    m->first_top.token_ids = m->top_ids;
    m->first_top.n_logprobs = 3;
    m->first_top.logprobs = m->top_lps;
    mlaserve__first_token__init(&m->first);
    m->first.request_id = 77;
    m->first.token_id = 4321;
    m->first.logprob = -0.125f;
    m->first.top = &m->first_top;
    m->first.queue_ns = 1000;
    m->first.prefill_ns = 25000000;
    m->first.transfer_ns = 300000;
    m->first.n_prompt_tokens = 7;
    m->first.n_cached_tokens = 64;
    m->env[6].msg_case = MLASERVE__ENVELOPE__MSG_FIRST_TOKEN;
    m->env[6].first_token = &m->first;

    mlaserve__token_chunk__init(&m->chunk);
    m->chunk.request_id = 77;
    m->chunk.first_index = 1;
    m->chunk.n_token_ids = 3;
    m->chunk.token_ids = m->chunk_ids;
    m->chunk.n_logprobs = 3;
    m->chunk.logprobs = m->chunk_lps;
    m->chunk.n_top = 3;
    m->chunk.top = m->chunk_top_p;
    m->env[7].msg_case = MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK;
    m->env[7].token_chunk = &m->chunk;

    mlaserve__finish__init(&m->finish);
    m->finish.request_id = 77;
    m->finish.reason = MLASERVE__FINISH_REASON__FINISH_REASON_ERROR;
    m->finish.prompt_tokens = 7;
    m->finish.completion_tokens = 4;
    m->finish.status = MLS_ERR_CHECKSUM;
    m->finish.message = "layer 3 checksum mismatch";
    m->finish.decode_ns = 123456;
    m->env[8].msg_case = MLASERVE__ENVELOPE__MSG_FINISH;
    m->env[8].finish = &m->finish;

    mlaserve__cancel__init(&m->cancel);
    m->cancel.request_id = 77;
    m->cancel.reason = "client disconnected";
    m->env[9].msg_case = MLASERVE__ENVELOPE__MSG_CANCEL;
    m->env[9].cancel = &m->cancel;

    mls_proto_error_init(&m->env[10], &m->error, 78, MLS_ERR_PARSE, "bad frame");

    mlaserve__drain__init(&m->drain);
    m->drain.deadline_ms = 60000;
    m->drain.reason = "operator request";
    m->env[11].msg_case = MLASERVE__ENVELOPE__MSG_DRAIN;
    m->env[11].drain = &m->drain;

    mlaserve__heartbeat__init(&m->heartbeat);
    m->heartbeat.seq = 5;
    m->heartbeat.sent_unix_ns = 1700000000000000001ull;
    m->env[12].msg_case = MLASERVE__ENVELOPE__MSG_HEARTBEAT;
    m->env[12].heartbeat = &m->heartbeat;

    mlaserve__start_decode__init(&m->start);
    m->start.request_id = 77;
    m->start.n_prompt_tokens = 10;
    m->start.first_token_id = 4321;
    m->start.n_generated = 4;
    m->start.sampling = &m->sampling;
    m->env[13].msg_case = MLASERVE__ENVELOPE__MSG_START_DECODE;
    m->env[13].start_decode = &m->start;

    for (i = 0; i < (int)MLS_AUTH_NONCE_BYTES; i++) {
        m->nonce[i] = (uint8_t)(i * 7 + 1);
        m->proof_bytes[i] = (uint8_t)(i * 13 + 5);
    }
    mlaserve__auth_hello__init(&m->hello);
    m->hello.protocol_version = MLS_PROTO_VERSION;
    m->hello.role = MLASERVE__AUTH_ROLE__AUTH_ROLE_ACCEPTOR;
    m->hello.nonce.data = m->nonce;
    m->hello.nonce.len = sizeof(m->nonce);
    m->env[14].msg_case = MLASERVE__ENVELOPE__MSG_AUTH_HELLO;
    m->env[14].auth_hello = &m->hello;

    mlaserve__auth_proof__init(&m->proof);
    m->proof.proof.data = m->proof_bytes;
    m->proof.proof.len = sizeof(m->proof_bytes);
    m->env[15].msg_case = MLASERVE__ENVELOPE__MSG_AUTH_PROOF;
    m->env[15].auth_proof = &m->proof;
}

/* ---- generic checks through the descriptors ------------------------------- */

/* Name of the first field of msg (recursively) left at its default, or NULL. */
static const char *msg_unset_field(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    unsigned i;

    for (i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)msg;
        int set = 0;

        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            continue; /* Envelope: one member set, checked by msg_case */
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            set = *(const size_t *)(base + f->quantifier_offset) > 0;
        } else {
            const void *v = base + f->offset;
            switch (f->type) {
            case PROTOBUF_C_TYPE_STRING:
                set = *(char *const *)v != NULL && (*(char *const *)v)[0] != '\0';
                break;
            case PROTOBUF_C_TYPE_BYTES:
                set = ((const ProtobufCBinaryData *)v)->len > 0;
                break;
            case PROTOBUF_C_TYPE_MESSAGE:
                set = *(const ProtobufCMessage *const *)v != NULL;
                if (set) {
                    const char *inner = msg_unset_field(*(const ProtobufCMessage *const *)v);
                    if (inner != NULL) {
                        return inner;
                    }
                }
                break;
            case PROTOBUF_C_TYPE_UINT64:
            case PROTOBUF_C_TYPE_FIXED64:
            case PROTOBUF_C_TYPE_INT64:
            case PROTOBUF_C_TYPE_SINT64:
            case PROTOBUF_C_TYPE_SFIXED64:
                set = *(const uint64_t *)v != 0;
                break;
            case PROTOBUF_C_TYPE_DOUBLE:
                set = *(const double *)v != 0.0;
                break;
            case PROTOBUF_C_TYPE_FLOAT:
                set = *(const float *)v != 0.0f;
                break;
            case PROTOBUF_C_TYPE_BOOL:
                set = *(const protobuf_c_boolean *)v != 0;
                break;
            default: /* 32-bit ints and enums */
                set = *(const uint32_t *)v != 0;
                break;
            }
        }
        if (!set) {
            return f->name;
        }
    }
    return NULL;
}

static uint8_t *pack_all(msg_set *m, size_t *len_p, size_t offs_p[N_MSG + 1])
{
    size_t total = 0, len;
    uint8_t *buf;
    int i;

    for (i = 0; i < N_MSG; i++) {
        total += mls_proto_frame_size(&m->env[i]);
    }
    buf = malloc(total);
    len = 0;
    for (i = 0; i < N_MSG; i++) {
        size_t n = 0;
        offs_p[i] = len;
        if (mls_proto_frame_pack_into(&m->env[i], MLS_PROTO_DEFAULT_MAX_FRAME_BYTES, buf + len,
                                      total - len, &n, NULL) != MLS_OK) {
            free(buf);
            return NULL;
        }
        len += n;
    }
    offs_p[N_MSG] = len;
    *len_p = len;
    return buf;
}

/* Repack env and compare to frame bytes [off, off+len). */
static int repack_equal(const Mlaserve__Envelope *env, const uint8_t *frame, size_t len)
{
    uint8_t *again;
    size_t again_len;
    int eq;

    if (mls_proto_frame_pack(env, MLS_PROTO_DEFAULT_MAX_FRAME_BYTES, &again, &again_len, NULL) !=
        MLS_OK) {
        return 0;
    }
    eq = again_len == len && memcmp(again, frame, len) == 0;
    free(again);
    return eq;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_every_message_sets_every_field(void)
{
    msg_set m;
    int i;

    msg_set_build(&m);
    for (i = 0; i < N_MSG; i++) {
        const char *unset = msg_unset_field((const ProtobufCMessage *)&m.env[i]);
        const ProtobufCMessage *inner = NULL;
        CHECK_EQ_INT(m.env[i].msg_case, i + 1);
        inner = (const ProtobufCMessage *)m.env[i].heartbeat; /* any union member */
        CHECK_MSG(unset == NULL, "envelope %d: field %s left unset", i, unset);
        unset = msg_unset_field(inner);
        CHECK_MSG(unset == NULL, "%s: field %s left unset", mls_proto_msg_name(m.env[i].msg_case),
                  unset);
    }
    /* Every oneof member of Envelope is covered. */
    CHECK_EQ_INT(mlaserve__envelope__descriptor.n_fields, N_MSG);
}

static void test_round_trip_every_message(void)
{
    msg_set m;
    mls_proto_reader *r = NULL;
    mls_err err = {{0}};
    size_t offs[N_MSG + 1], len;
    uint8_t *wire;
    int i;

    msg_set_build(&m);
    wire = pack_all(&m, &len, offs);
    CHECK(wire != NULL);
    CHECK_OK(mls_proto_reader_create(NULL, &r, &err));
    for (i = 0; i < N_MSG; i++) {
        const uint8_t *p = wire + offs[i];
        size_t n = offs[i + 1] - offs[i];
        Mlaserve__Envelope *env = NULL;
        const char *unset;

        CHECK_OK(mls_proto_reader_next(r, &p, &n, &env, &err));
        CHECK(env != NULL);
        CHECK_EQ_INT(n, 0);
        CHECK_EQ_INT(env->msg_case, m.env[i].msg_case);
        unset = msg_unset_field((const ProtobufCMessage *)env->heartbeat);
        CHECK_MSG(unset == NULL, "%s: field %s lost in the round trip",
                  mls_proto_msg_name(env->msg_case), unset);
        CHECK_MSG(repack_equal(env, wire + offs[i], offs[i + 1] - offs[i]),
                  "%s: repacked bytes differ", mls_proto_msg_name(env->msg_case));
    }
    /* Spot checks of values, beyond "set". */
    {
        const uint8_t *p = wire + offs[5];
        size_t n = offs[6] - offs[5];
        Mlaserve__Envelope *env = NULL;
        Mlaserve__PrefillRequest *pr;

        CHECK_OK(mls_proto_reader_next(r, &p, &n, &env, &err));
        pr = env->prefill_request;
        CHECK_EQ_INT(pr->request_id, 77);
        CHECK_EQ_INT(pr->n_prompt_token_ids, 7);
        CHECK_EQ_INT(pr->prompt_token_ids[6], 100000 + 6 * 17);
        CHECK_EQ_INT(pr->page_ids[4], 1012);
        CHECK_EQ_INT(pr->sampling->stop_sequences[1]->ids[2], 9);
        CHECK(pr->sampling->temperature == 0.7f && pr->sampling->top_p == 0.95f);
        CHECK_STR_EQ(pr->decode_node_id, "decode-1");
        CHECK(pr->decode_address.len == sizeof(m.decode_addr) &&
              memcmp(pr->decode_address.data, m.decode_addr, sizeof(m.decode_addr)) == 0);
        CHECK_EQ_INT(pr->block_hashes[1], 0x5555666677778888ull);
    }
    {
        const uint8_t *p = wire + offs[0];
        size_t n = offs[1] - offs[0];
        Mlaserve__Envelope *env = NULL;
        kvl_layout l;
        uint32_t n_layers = 0;

        CHECK_OK(mls_proto_reader_next(r, &p, &n, &env, &err));
        CHECK_OK(mls_proto_kv_layout_from_wire(env->register_node->kv_layout, &l, &n_layers,
                                               &err));
        CHECK_EQ_INT(l.dtype, KVL_DTYPE_FP8);
        CHECK_EQ_INT(l.row_bytes, 656);
        CHECK_EQ_INT(n_layers, 61);
        CHECK_EQ_INT(l.model_fingerprint, 0x1234567890abcdefull);
        CHECK_EQ_INT(env->register_node->protocol_version, MLS_PROTO_VERSION);
    }
    {
        const uint8_t *p = wire + offs[10];
        size_t n = offs[11] - offs[10];
        Mlaserve__Envelope *env = NULL;

        CHECK_OK(mls_proto_reader_next(r, &p, &n, &env, &err));
        CHECK_EQ_INT(mls_proto_status_from_wire(env->error->status), MLS_ERR_PARSE);
        CHECK_STR_EQ(env->error->status_name, "ERR_PARSE");
        CHECK_STR_EQ(env->error->message, "bad frame");
    }
    CHECK_EQ_INT(mls_proto_reader_frames_ok(r), N_MSG + 3);
    CHECK_EQ_INT(mls_proto_reader_frames_bad(r), 0);
    mls_proto_reader_destroy(r);
    free(wire);
}

/* Feed wire in chunks whose sizes come from next_chunk; check all N_MSG arrive in order. */
static int feed_stream(const uint8_t *wire, size_t len, const size_t offs[N_MSG + 1],
                       unsigned seed, int byte_by_byte)
{
    mls_proto_reader *r = NULL;
    size_t pos = 0;
    int got = 0, ok = 1;

    if (mls_proto_reader_create(NULL, &r, NULL) != MLS_OK) {
        return 0;
    }
    while (pos < len && ok) {
        size_t chunk = byte_by_byte ? 1 : 1 + (size_t)(rand_r(&seed) % 97);
        const uint8_t *p = wire + pos;
        size_t n;

        if (chunk > len - pos) {
            chunk = len - pos;
        }
        n = chunk;
        pos += chunk;
        for (;;) {
            Mlaserve__Envelope *env = NULL;
            if (mls_proto_reader_next(r, &p, &n, &env, NULL) != MLS_OK) {
                ok = 0;
                break;
            }
            if (env == NULL) {
                break;
            }
            if (got >= N_MSG || (int)env->msg_case != got + 1 ||
                !repack_equal(env, wire + offs[got], offs[got + 1] - offs[got])) {
                ok = 0;
                break;
            }
            got++;
        }
        if (n != 0) {
            ok = 0;
        }
    }
    mls_proto_reader_destroy(r);
    return ok && got == N_MSG;
}

static void test_decoder_byte_by_byte_and_random_chunks(void)
{
    msg_set m;
    size_t offs[N_MSG + 1], len;
    uint8_t *wire;
    unsigned seed;

    msg_set_build(&m);
    wire = pack_all(&m, &len, offs);
    CHECK(wire != NULL);
    CHECK_MSG(feed_stream(wire, len, offs, 0, 1), "byte-by-byte feeding lost or mangled frames");
    for (seed = 1; seed <= 50; seed++) {
        CHECK_MSG(feed_stream(wire, len, offs, seed, 0), "random chunks (seed %u) failed", seed);
    }
    free(wire);
}

static void test_oversized_frame_rejected_before_buffering(void)
{
    mls_frame_decoder *dec = NULL;
    mls_err err = {{0}};
    uint8_t hdr[4], good[4 + 3] = {0, 0, 0, 3, 'a', 'b', 'c'};
    uint8_t junk[4096];
    const uint8_t *p, *frame;
    size_t n, flen, skipped;
    int64_t net_before;

    CHECK_OK(mls_frame_decoder_create(1024, &dec, &err));
    net_before = mls_alloc_bytes(MLS_ALLOC_TAG_NET);
    mls_frame_header_write(1u << 29, hdr); /* 512 MiB announced */
    p = hdr;
    n = 4;
    CHECK_STATUS(mls_frame_decoder_next(dec, &p, &n, &frame, &flen, &err), MLS_ERR_TOO_LARGE);
    CHECK(frame == NULL);
    CHECK(strstr(err.msg, "536870912") != NULL && strstr(err.msg, "1024") != NULL);
    CHECK_EQ_INT(mls_frame_decoder_buffer_bytes(dec), 0);
    CHECK_EQ_INT(mls_alloc_bytes(MLS_ALLOC_TAG_NET), net_before);

    /* Exactly at the limit + 1 is refused too; the skipped payload never grows memory. */
    mls_frame_decoder_destroy(dec);
    CHECK_OK(mls_frame_decoder_create(1024, &dec, &err));
    mls_frame_header_write(1025, hdr);
    p = hdr;
    n = 4;
    CHECK_STATUS(mls_frame_decoder_next(dec, &p, &n, &frame, &flen, &err), MLS_ERR_TOO_LARGE);
    memset(junk, 0xAB, sizeof(junk));
    skipped = 0;
    while (skipped < 1025) {
        size_t k = 1025 - skipped < 100 ? 1025 - skipped : 100;
        p = junk;
        n = k;
        CHECK_OK(mls_frame_decoder_next(dec, &p, &n, &frame, &flen, &err));
        CHECK(frame == NULL && n == 0);
        CHECK_EQ_INT(mls_frame_decoder_buffer_bytes(dec), 0);
        skipped += k;
    }
    /* The stream is back in sync: the next frame decodes. */
    p = good;
    n = sizeof(good);
    CHECK_OK(mls_frame_decoder_next(dec, &p, &n, &frame, &flen, &err));
    CHECK(frame != NULL && flen == 3 && memcmp(frame, "abc", 3) == 0);
    /* A frame exactly at the limit is accepted. */
    {
        uint8_t *big = calloc(4 + 1024, 1);
        mls_frame_header_write(1024, big);
        big[4 + 1023] = 0x5a;
        p = big;
        n = 4 + 10; /* split so the decoder must buffer */
        CHECK_OK(mls_frame_decoder_next(dec, &p, &n, &frame, &flen, &err));
        CHECK(frame == NULL);
        n = 1024 - 10;
        CHECK_OK(mls_frame_decoder_next(dec, &p, &n, &frame, &flen, &err));
        CHECK(frame != NULL && flen == 1024 && frame[1023] == 0x5a);
        free(big);
    }
    mls_frame_decoder_destroy(dec);
    CHECK_STATUS(mls_frame_decoder_create(0, &dec, &err), MLS_ERR_INVALID_ARG);
}

static void test_bad_payloads_keep_stream_in_sync(void)
{
    msg_set m;
    mls_proto_reader *r = NULL;
    mls_err err = {{0}};
    uint8_t wire[4096];
    size_t len = 0, hb_len = 0, n;
    const uint8_t *p;
    Mlaserve__Envelope *env;
    uint8_t hb[64];
    unsigned seed = 7;
    int i;

    msg_set_build(&m);
    CHECK_OK(mls_proto_frame_pack_into(&m.env[12], 4096, hb, sizeof(hb), &hb_len, &err));

    /* Frame 1: random garbage that is not a protobuf message. */
    mls_frame_header_write(64, wire);
    for (i = 0; i < 64; i++) {
        wire[4 + i] = (uint8_t)(rand_r(&seed) | 0x80); /* varints that never end */
    }
    len = 68;
    /* Frame 2: a heartbeat truncated by 3 bytes, framed with the short length. */
    mls_frame_header_write((uint32_t)(hb_len - 4 - 3), wire + len);
    memcpy(wire + len + 4, hb + 4, hb_len - 4 - 3);
    len += hb_len - 3;
    /* Frame 3: an empty envelope (no message set). */
    mls_frame_header_write(0, wire + len);
    len += 4;
    /* Frame 4: an envelope whose only field is unknown (field 99, varint 1). */
    mls_frame_header_write(3, wire + len);
    wire[len + 4] = 0x98; /* tag (99 << 3) = 792 = varint 0x98 0x06 */
    wire[len + 5] = 0x06;
    wire[len + 6] = 0x01;
    len += 7;
    /* Frame 5: a good heartbeat. */
    memcpy(wire + len, hb, hb_len);
    len += hb_len;

    CHECK_OK(mls_proto_reader_create(NULL, &r, &err));
    p = wire;
    n = len;
    CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &env, &err), MLS_ERR_PARSE);
    CHECK(env == NULL);
    CHECK_MSG(strstr(err.msg, "not a valid mlaserve.Envelope") != NULL, "message: %s", err.msg);
    CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &env, &err), MLS_ERR_PARSE);
    CHECK(strstr(err.msg, "not a valid") != NULL);
    CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &env, &err), MLS_ERR_PARSE);
    CHECK_MSG(strstr(err.msg, "no known message") != NULL, "message: %s", err.msg);
    CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &env, &err), MLS_ERR_PARSE);
    CHECK_MSG(strstr(err.msg, "no known message") != NULL, "message: %s", err.msg);
    CHECK_OK(mls_proto_reader_next(r, &p, &n, &env, &err));
    CHECK(env != NULL && env->msg_case == MLASERVE__ENVELOPE__MSG_HEARTBEAT);
    CHECK_EQ_INT(env->heartbeat->seq, 5);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(mls_proto_reader_frames_bad(r), 4);
    CHECK_EQ_INT(mls_proto_reader_frames_ok(r), 1);
    mls_proto_reader_destroy(r);

    /* Random payloads never crash the unpacker (ASan watches). */
    for (i = 0; i < 2000; i++) {
        uint8_t buf[48];
        Mlaserve__Envelope__MsgCase which;
        size_t k, blen = 1 + (size_t)(rand_r(&seed) % sizeof(buf));
        mls_status st;
        for (k = 0; k < blen; k++) {
            buf[k] = (uint8_t)rand_r(&seed);
        }
        st = mls_proto_envelope_check(buf, blen, 1 << 16, &which, &err);
        CHECK(st == MLS_OK || st == MLS_ERR_PARSE || st == MLS_ERR_TOO_LARGE);
    }
}

static void test_unpack_allocator_cap(void)
{
    /* A TokenChunk with many empty TopLogprobs: 2 wire bytes each, but each
     * unpacks into a whole message struct plus a pointer. */
    enum { N_EMPTY = 20000 };
    size_t chunk_len = 2 * N_EMPTY, env_len, pos = 0;
    uint8_t *payload = malloc(16 + chunk_len);
    mls_proto_limits lim = {.max_frame_bytes = 1 << 20, .max_unpacked_bytes = 64 << 10};
    mls_proto_reader *r = NULL;
    mls_err err = {{0}};
    Mlaserve__Envelope__MsgCase which;
    uint8_t *frame;
    const uint8_t *p;
    size_t n, i;
    Mlaserve__Envelope *env;

    /* Envelope field 8 (token_chunk), length-delimited: tag 0x42, varint length. */
    payload[pos++] = 0x42;
    for (env_len = chunk_len; env_len >= 0x80; env_len >>= 7) {
        payload[pos++] = (uint8_t)(env_len | 0x80);
    }
    payload[pos++] = (uint8_t)env_len;
    for (i = 0; i < N_EMPTY; i++) {
        payload[pos++] = 0x2a; /* TokenChunk.top (field 5, length-delimited) */
        payload[pos++] = 0x00;
    }
    frame = malloc(4 + pos);
    mls_frame_header_write((uint32_t)pos, frame);
    memcpy(frame + 4, payload, pos);

    CHECK_OK(mls_proto_reader_create(&lim, &r, &err));
    p = frame;
    n = 4 + pos;
    CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &env, &err), MLS_ERR_TOO_LARGE);
    CHECK_MSG(strstr(err.msg, "unpacks into more than 65536") != NULL, "message: %s", err.msg);
    mls_proto_reader_destroy(r);

    /* With room enough, the same frame is fine and really has N_EMPTY entries. */
    lim.max_unpacked_bytes = 8u << 20;
    CHECK_OK(mls_proto_reader_create(&lim, &r, &err));
    p = frame;
    n = 4 + pos;
    CHECK_OK(mls_proto_reader_next(r, &p, &n, &env, &err));
    CHECK(env != NULL && env->msg_case == MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK);
    CHECK_EQ_INT(env->token_chunk->n_top, N_EMPTY);
    mls_proto_reader_destroy(r);

    CHECK_STATUS(mls_proto_envelope_check(payload, pos, 64 << 10, &which, &err),
                 MLS_ERR_TOO_LARGE);
    CHECK_OK(mls_proto_envelope_check(payload, pos, 8u << 20, &which, &err));
    CHECK_EQ_INT(which, MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK);
    free(frame);
    free(payload);
}

static void test_arena(void)
{
    mls_frame_arena *a = NULL;
    mls_err err = {{0}};
    void *p1, *p2, *p3;
    int i;

    CHECK_STATUS(mls_frame_arena_create(8, &a, &err), MLS_ERR_INVALID_ARG);
    CHECK_OK(mls_frame_arena_create(16384, &a, &err));
    p1 = mls_frame_arena_alloc(a, 1);
    p2 = mls_frame_arena_alloc(a, 0);
    p3 = mls_frame_arena_alloc(a, 33);
    CHECK(p1 != NULL && p2 != NULL && p3 != NULL && p1 != p2 && p2 != p3);
    CHECK(((uintptr_t)p1 % 16) == 0 && ((uintptr_t)p2 % 16) == 0 && ((uintptr_t)p3 % 16) == 0);
    memset(p3, 0xff, 33);
    CHECK(!mls_frame_arena_exhausted(a));
    CHECK(mls_frame_arena_alloc(a, 20000) == NULL);
    CHECK(mls_frame_arena_exhausted(a));
    CHECK(mls_frame_arena_alloc(a, SIZE_MAX) == NULL);
    mls_frame_arena_reset(a);
    CHECK(!mls_frame_arena_exhausted(a));
    CHECK_EQ_INT(mls_frame_arena_used(a), 0);
    /* Many small allocations fill the budget and then fail, never exceeding it. */
    for (i = 0; i < 10000; i++) {
        if (mls_frame_arena_alloc(a, 100) == NULL) {
            break;
        }
        CHECK_LE_DBL(mls_frame_arena_held(a), 16384);
    }
    CHECK(i > 50 && i < 10000);
    CHECK(mls_frame_arena_exhausted(a));
    mls_frame_arena_destroy(a);
}

static void test_pack_limits_and_helpers(void)
{
    msg_set m;
    Mlaserve__Envelope empty = MLASERVE__ENVELOPE__INIT;
    mls_err err = {{0}};
    uint8_t *frame = NULL, small[8];
    size_t len = 0;
    kvl_layout l;
    uint32_t n_layers;
    Mlaserve__KvLayout bad;
    uint8_t bad_wire[KVL_WIRE_BYTES];
    kvl_dtype dt;

    msg_set_build(&m);
    CHECK_STATUS(mls_proto_frame_pack(&empty, 1024, &frame, &len, &err), MLS_ERR_INVALID_ARG);
    CHECK_STATUS(mls_proto_frame_pack(&m.env[0], 16, &frame, &len, &err), MLS_ERR_TOO_LARGE);
    CHECK(strstr(err.msg, "register_node") != NULL);
    CHECK_STATUS(mls_proto_frame_pack_into(&m.env[0], 4096, small, sizeof(small), &len, &err),
                 MLS_ERR_TOO_LARGE);
    CHECK_OK(mls_proto_frame_pack(&m.env[12], 1024, &frame, &len, &err));
    CHECK_EQ_INT(mls_frame_header_read(frame), len - 4);
    CHECK_EQ_INT(len, mls_proto_frame_size(&m.env[12]));
    free(frame);

    CHECK_EQ_INT(mls_proto_status_from_wire(-1), MLS_ERR_INTERNAL);
    CHECK_EQ_INT(mls_proto_status_from_wire(MLS_STATUS_COUNT), MLS_ERR_INTERNAL);
    CHECK_EQ_INT(mls_proto_status_from_wire(MLS_ERR_BUSY), MLS_ERR_BUSY);
    CHECK_STATUS(mls_proto_kv_dtype_from_wire(MLASERVE__KV_DTYPE__KV_DTYPE_UNSPECIFIED, &dt),
                 MLS_ERR_INVALID_ARG);
    CHECK_OK(mls_proto_kv_dtype_from_wire(MLASERVE__KV_DTYPE__KV_DTYPE_BF16, &dt));
    CHECK_EQ_INT(dt, KVL_DTYPE_BF16);
    CHECK_STR_EQ(mls_proto_msg_name(MLASERVE__ENVELOPE__MSG_TOKEN_CHUNK), "token_chunk");

    /* the layout's bytes are kvl_layout_decode's to judge: a row size this
     * build does not derive, another version, a short or missing form */
    bad = m.layout;
    memcpy(bad_wire, m.layout_wire, sizeof(bad_wire));
    bad.layout.data = bad_wire;
    bad_wire[KVL_WIRE_HEADER_BYTES] += 2; /* latent row_bytes, low byte */
    CHECK_STATUS(mls_proto_kv_layout_from_wire(&bad, &l, &n_layers, &err), MLS_ERR_PEER_MISMATCH);
    CHECK_MSG(strstr(err.msg, "row_bytes") != NULL, "%s", err.msg);
    memcpy(bad_wire, m.layout_wire, sizeof(bad_wire));
    bad_wire[4] = 99; /* version */
    CHECK_STATUS(mls_proto_kv_layout_from_wire(&bad, &l, &n_layers, &err), MLS_ERR_PEER_MISMATCH);
    CHECK_MSG(strstr(err.msg, "version 99") != NULL, "%s", err.msg);
    memcpy(bad_wire, m.layout_wire, sizeof(bad_wire));
    bad.layout.len = KVL_WIRE_BYTES - 1;
    CHECK_STATUS(mls_proto_kv_layout_from_wire(&bad, &l, &n_layers, &err), MLS_ERR_PEER_MISMATCH);
    bad.layout.data = NULL;
    bad.layout.len = 0;
    CHECK_STATUS(mls_proto_kv_layout_from_wire(&bad, &l, &n_layers, &err), MLS_ERR_PEER_MISMATCH);
}

/* A header announcing a big frame costs nothing until its bytes come: the
 * buffer grows with what arrived (the router allocated 16 MiB per header). */
static void test_decoder_buffer_grows_with_bytes(void)
{
    mls_frame_decoder *dec = NULL;
    uint8_t hdr[MLS_FRAME_HEADER_BYTES], *chunk = calloc(1, 1u << 20);
    const uint8_t *p, *frame = NULL;
    size_t n, frame_len = 0, fed = 0;
    mls_err err = {{0}};

    CHECK(chunk != NULL);
    CHECK_OK(mls_frame_decoder_create(16u << 20, &dec, &err));
    mls_frame_header_write(16u << 20, hdr);
    p = hdr;
    n = sizeof(hdr);
    CHECK_OK(mls_frame_decoder_next(dec, &p, &n, &frame, &frame_len, &err));
    CHECK(frame == NULL);
    CHECK_MSG(mls_frame_decoder_buffer_bytes(dec) == 0, "a bare header holds %zu bytes",
              mls_frame_decoder_buffer_bytes(dec));
    p = chunk;
    n = 100;
    CHECK_OK(mls_frame_decoder_next(dec, &p, &n, &frame, &frame_len, &err));
    CHECK_MSG(mls_frame_decoder_buffer_bytes(dec) <= 4096, "100 bytes hold %zu",
              mls_frame_decoder_buffer_bytes(dec));
    fed = 100;
    while (fed < (16u << 20)) {
        size_t k = (16u << 20) - fed < (1u << 20) ? (16u << 20) - fed : (1u << 20);
        p = chunk;
        n = k;
        CHECK_OK(mls_frame_decoder_next(dec, &p, &n, &frame, &frame_len, &err));
        fed += k;
        /* never more than twice what arrived (doubling), never more than the frame */
        CHECK_MSG(mls_frame_decoder_buffer_bytes(dec) <= 2 * fed &&
                      mls_frame_decoder_buffer_bytes(dec) <= (16u << 20),
                  "%zu bytes held after %zu arrived", mls_frame_decoder_buffer_bytes(dec), fed);
    }
    CHECK(frame != NULL);
    CHECK_EQ_INT(frame_len, 16u << 20);
    /* a smaller limit for what comes next (before authentication) */
    mls_frame_decoder_set_max(dec, 4096);
    mls_frame_header_write(4097, hdr);
    p = hdr;
    n = sizeof(hdr);
    CHECK_STATUS(mls_frame_decoder_next(dec, &p, &n, &frame, &frame_len, &err), MLS_ERR_TOO_LARGE);
    mls_frame_decoder_destroy(dec);
    free(chunk);
}

/* Sealed frames: the right session opens them in order; a replayed, altered
 * or reordered frame is MLS_ERR_CHECKSUM. */
static void test_sealed_frames(void)
{
    mls_auth_key key, other;
    mls_auth_session tx, rx, wrong;
    uint8_t dn[MLS_AUTH_NONCE_BYTES], an[MLS_AUTH_NONCE_BYTES];
    uint8_t *f1 = NULL, *f2 = NULL;
    size_t l1 = 0, l2 = 0;
    const uint8_t *p;
    size_t n;
    mls_proto_reader *r = NULL;
    Mlaserve__Envelope env = MLASERVE__ENVELOPE__INIT, *got = NULL;
    Mlaserve__Heartbeat hb = MLASERVE__HEARTBEAT__INIT;
    mls_err err = {{0}};
    const char *secret = "0123456789abcdef0123456789abcdef-test";

    CHECK_OK(mls_auth_key_from_bytes((const uint8_t *)secret, strlen(secret), &key, &err));
    CHECK_OK(mls_auth_key_from_bytes((const uint8_t *)secret, strlen(secret) - 1, &other, &err));
    CHECK_STATUS(mls_auth_key_from_bytes((const uint8_t *)secret, 31, &other, &err),
                 MLS_ERR_INVALID_ARG);
    mls_auth_nonce(dn);
    mls_auth_nonce(an);
    mls_auth_session_init(&key, MLS_AUTH_ROLE_DIALER, dn, an, &tx);
    mls_auth_session_init(&key, MLS_AUTH_ROLE_ACCEPTOR, dn, an, &rx);
    env.msg_case = MLASERVE__ENVELOPE__MSG_HEARTBEAT;
    env.heartbeat = &hb;
    hb.seq = 1;
    CHECK_OK(mls_proto_frame_pack_sealed(&env, 4096, &tx, &f1, &l1, &err));
    hb.seq = 2;
    CHECK_OK(mls_proto_frame_pack_sealed(&env, 4096, &tx, &f2, &l2, &err));
    CHECK_OK(mls_proto_reader_create(NULL, &r, &err));
    mls_proto_reader_set_session(r, &rx);
    /* reordered: the second frame first does not open */
    {
        mls_auth_session rx2 = rx;
        mls_proto_reader_set_session(r, &rx2);
        p = f2;
        n = l2;
        CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &got, &err), MLS_ERR_CHECKSUM);
        mls_proto_reader_set_session(r, &rx);
    }
    p = f1;
    n = l1;
    CHECK_OK(mls_proto_reader_next(r, &p, &n, &got, &err));
    CHECK(got != NULL && got->msg_case == MLASERVE__ENVELOPE__MSG_HEARTBEAT &&
          got->heartbeat->seq == 1);
    /* replayed */
    p = f1;
    n = l1;
    CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &got, &err), MLS_ERR_CHECKSUM);
    /* altered */
    f2[l2 - 3] ^= 1;
    p = f2;
    n = l2;
    CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &got, &err), MLS_ERR_CHECKSUM);
    f2[l2 - 3] ^= 1;
    p = f2;
    n = l2;
    CHECK_OK(mls_proto_reader_next(r, &p, &n, &got, &err));
    CHECK(got != NULL && got->heartbeat->seq == 2);
    /* another key, or the other direction's key, opens nothing */
    mls_auth_session_init(&other, MLS_AUTH_ROLE_ACCEPTOR, dn, an, &wrong);
    mls_proto_reader_set_session(r, &wrong);
    p = f1;
    n = l1;
    CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &got, &err), MLS_ERR_CHECKSUM);
    mls_auth_session_init(&key, MLS_AUTH_ROLE_DIALER, dn, an, &wrong);
    mls_proto_reader_set_session(r, &wrong);
    p = f1;
    n = l1;
    CHECK_STATUS(mls_proto_reader_next(r, &p, &n, &got, &err), MLS_ERR_CHECKSUM);
    /* proofs: bound to the role, both nonces and the key */
    {
        uint8_t pr[MLS_AUTH_PROOF_BYTES];
        mls_auth_proof(&key, MLS_AUTH_ROLE_DIALER, dn, an, MLS_PROTO_VERSION, pr);
        CHECK(mls_auth_proof_check(&key, MLS_AUTH_ROLE_DIALER, dn, an, MLS_PROTO_VERSION, pr,
                                   sizeof(pr)));
        CHECK(!mls_auth_proof_check(&key, MLS_AUTH_ROLE_ACCEPTOR, dn, an, MLS_PROTO_VERSION, pr,
                                    sizeof(pr)));
        CHECK(!mls_auth_proof_check(&key, MLS_AUTH_ROLE_DIALER, an, dn, MLS_PROTO_VERSION, pr,
                                    sizeof(pr)));
        CHECK(!mls_auth_proof_check(&other, MLS_AUTH_ROLE_DIALER, dn, an, MLS_PROTO_VERSION, pr,
                                    sizeof(pr)));
        CHECK(!mls_auth_proof_check(&key, MLS_AUTH_ROLE_DIALER, dn, an, MLS_PROTO_VERSION, pr,
                                    sizeof(pr) - 1));
    }
    mls_proto_reader_destroy(r);
    free(f1);
    free(f2);
}

int main(void)
{
    int64_t net0 = mls_alloc_bytes(MLS_ALLOC_TAG_NET);

    MLS_TEST_RUN(test_every_message_sets_every_field);
    MLS_TEST_RUN(test_round_trip_every_message);
    MLS_TEST_RUN(test_decoder_byte_by_byte_and_random_chunks);
    MLS_TEST_RUN(test_oversized_frame_rejected_before_buffering);
    MLS_TEST_RUN(test_bad_payloads_keep_stream_in_sync);
    MLS_TEST_RUN(test_unpack_allocator_cap);
    MLS_TEST_RUN(test_arena);
    MLS_TEST_RUN(test_pack_limits_and_helpers);
    MLS_TEST_RUN(test_decoder_buffer_grows_with_bytes);
    MLS_TEST_RUN(test_sealed_frames);
    if (mls_alloc_bytes(MLS_ALLOC_TAG_NET) != net0) {
        fprintf(stderr, "FAIL: %lld NET bytes leaked\n",
                (long long)(mls_alloc_bytes(MLS_ALLOC_TAG_NET) - net0));
        return 1;
    }
    return MLS_TEST_DONE();
}
