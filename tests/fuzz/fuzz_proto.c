/*
 * fuzz_proto.c - libFuzzer harness for the control plane's frames
 * (proto/mls_proto.h): the bytes the router reads from a node connection and a
 * node from the router, before and after registration.
 *
 * Input: one byte choosing how the stream is cut (1..255 bytes per read, 0 =
 * all at once), then the stream itself (4-byte big-endian lengths and
 * Envelope payloads). Every Envelope the reader hands out is named, packed
 * again and checked to unpack into the same message, and a KvLayout in a
 * Register goes through mls_proto_kv_layout_from_wire. Properties: the reader
 * never reports success without an envelope with a message set, every
 * refusal carries a reason, it keeps consuming after errors, and what it
 * accepted packs into something it accepts again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "mls_proto.h"

/* Small enough that the limit paths are reachable from short inputs. */
#define FUZZ_PROTO_MAX_FRAME (64u << 10)

static mls_proto_limits fuzz_proto_lim;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_log_quiet();
    fuzz_proto_lim.max_frame_bytes = FUZZ_PROTO_MAX_FRAME;
    fuzz_proto_lim.max_unpacked_bytes = MLS_PROTO_DEFAULT_UNPACK_FACTOR * FUZZ_PROTO_MAX_FRAME +
                                        MLS_PROTO_DEFAULT_UNPACK_SLACK_BYTES;
    return 0;
}

static void fuzz_proto_envelope(const Mlaserve__Envelope *env)
{
    uint8_t *frame = NULL;
    size_t frame_len = 0;
    Mlaserve__Envelope__MsgCase which = MLASERVE__ENVELOPE__MSG__NOT_SET;
    mls_err err = {{0}};
    mls_status st;

    FUZZ_CHECK(env->msg_case != MLASERVE__ENVELOPE__MSG__NOT_SET, "an empty envelope accepted");
    FUZZ_CHECK(mls_proto_msg_name(env->msg_case) != NULL, "no name for case %d", env->msg_case);
    if (env->msg_case == MLASERVE__ENVELOPE__MSG_REGISTER_NODE &&
        env->register_node->kv_layout != NULL) {
        kvl_layout l;
        uint32_t n_layers;
        mls_err lerr = {{0}};
        if (mls_proto_kv_layout_from_wire(env->register_node->kv_layout, &l, &n_layers, &lerr) !=
            MLS_OK) {
            FUZZ_CHECK(lerr.msg[0] != '\0', "a kv layout refused without a reason");
        }
    }
    if (env->msg_case == MLASERVE__ENVELOPE__MSG_ERROR) {
        (void)mls_proto_status_from_wire(env->error->status);
    }
    st = mls_proto_frame_pack(env, FUZZ_PROTO_MAX_FRAME, &frame, &frame_len, &err);
    if (st != MLS_OK) {
        /* Unknown fields kept from the input may make it longer than the cap. */
        FUZZ_CHECK(st == MLS_ERR_TOO_LARGE, "repacking: %s: %s", mls_status_name(st), err.msg);
        return;
    }
    FUZZ_CHECK(frame_len == mls_proto_frame_size(env), "packed %zu bytes, frame_size says %zu",
               frame_len, mls_proto_frame_size(env));
    st = mls_proto_envelope_check(frame + 4, frame_len - 4, fuzz_proto_lim.max_unpacked_bytes,
                                  &which, &err);
    FUZZ_CHECK(st == MLS_OK || st == MLS_ERR_TOO_LARGE, "repacked frame refused: %s: %s",
               mls_status_name(st), err.msg);
    FUZZ_CHECK(st != MLS_OK || which == env->msg_case, "repacked %s came back as %s",
               mls_proto_msg_name(env->msg_case), mls_proto_msg_name(which));
    free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_cursor in = {data, size};
    size_t step = fuzz_byte(&in);
    mls_proto_reader *reader = NULL;
    mls_err err = {{0}};
    uint64_t ok = 0, bad = 0;

    if (mls_proto_reader_create(&fuzz_proto_lim, &reader, &err) != MLS_OK) {
        FUZZ_CHECK(0, "reader_create: %s", err.msg);
    }
    while (in.n > 0) {
        size_t n = step == 0 || step > in.n ? in.n : step;
        const uint8_t *p = in.p;
        size_t left = n;
        in.p += n;
        in.n -= n;
        while (left > 0) {
            Mlaserve__Envelope *env = NULL;
            size_t before = left;
            mls_status st;
            err.msg[0] = '\0';
            st = mls_proto_reader_next(reader, &p, &left, &env, &err);
            if (st != MLS_OK) {
                FUZZ_CHECK(st == MLS_ERR_TOO_LARGE || st == MLS_ERR_PARSE, "reader: %s",
                           mls_status_name(st));
                FUZZ_CHECK(err.msg[0] != '\0', "a refused frame without a reason");
                bad++;
                continue;
            }
            if (env == NULL) {
                FUZZ_CHECK(left == 0, "need more bytes, with %zu of %zu left", left, before);
                break;
            }
            ok++;
            fuzz_proto_envelope(env);
        }
    }
    FUZZ_CHECK(mls_proto_reader_frames_ok(reader) == ok, "frames_ok %llu, saw %llu",
               (unsigned long long)mls_proto_reader_frames_ok(reader), (unsigned long long)ok);
    FUZZ_CHECK(mls_proto_reader_frames_bad(reader) == bad, "frames_bad %llu, saw %llu",
               (unsigned long long)mls_proto_reader_frames_bad(reader), (unsigned long long)bad);
    mls_proto_reader_destroy(reader);
    return 0;
}
