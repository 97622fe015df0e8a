/*
 * mls_auth.c - cluster key, handshake proofs and sealed frames (see
 * mls_auth.h), on libsodium: keyed BLAKE2b (crypto_generichash) for proofs
 * and session keys, ChaCha20-Poly1305 IETF for frames.
 */
#include "mls_auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

_Static_assert(MLS_AUTH_KEY_BYTES == crypto_aead_chacha20poly1305_ietf_KEYBYTES,
               "session keys are ChaCha20-Poly1305 keys");
_Static_assert(MLS_AUTH_TAG_BYTES == crypto_aead_chacha20poly1305_ietf_ABYTES,
               "the tag of a sealed frame");
_Static_assert(MLS_AUTH_KEY_BYTES >= crypto_generichash_KEYBYTES_MIN &&
                   MLS_AUTH_KEY_BYTES <= crypto_generichash_KEYBYTES_MAX,
               "the cluster key keys BLAKE2b");

static const char mls_auth_proof_label[] = "mlaserve-auth-v1";
static const char mls_auth_session_label[] = "mlaserve-session-v1";

static void mls_auth_init(void)
{
    /* idempotent and thread-safe; fails only without an entropy source, where
     * randombytes aborts anyway */
    if (sodium_init() < 0) {
        abort();
    }
}

mls_status mls_auth_key_from_bytes(const uint8_t *data, size_t len, mls_auth_key *key_p,
                                   mls_err *err)
{
    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r' || data[len - 1] == ' ' ||
                       data[len - 1] == '\t')) {
        len--;
    }
    if (len < MLS_AUTH_KEY_MIN_BYTES) {
        mls_err_set(err, "the cluster key has %zu bytes, at least %u are needed", len,
                    MLS_AUTH_KEY_MIN_BYTES);
        return MLS_ERR_INVALID_ARG;
    }
    mls_auth_init();
    crypto_generichash(key_p->bytes, sizeof(key_p->bytes), data, len, NULL, 0);
    return MLS_OK;
}

mls_status mls_auth_key_load(const char *path, mls_auth_key *key_p, mls_err *err)
{
    uint8_t buf[MLS_AUTH_KEY_MAX_FILE_BYTES + 1];
    struct stat sb;
    size_t len = 0;
    mls_status st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

    if (fd < 0) {
        mls_err_set(err, "cluster key file %s: %s", path, strerror(errno));
        return MLS_ERR_IO;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        mls_err_set(err, "cluster key file %s is not a regular file", path);
        st = MLS_ERR_INVALID_ARG;
        goto out_close;
    }
    if ((sb.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
        mls_err_set(err,
                    "cluster key file %s is accessible by group or others (mode %03o): "
                    "chmod 600 it",
                    path, (unsigned)(sb.st_mode & 0777));
        st = MLS_ERR_INVALID_ARG;
        goto out_close;
    }
    while (len < sizeof(buf)) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            mls_err_set(err, "cluster key file %s: %s", path, strerror(errno));
            st = MLS_ERR_IO;
            goto out_wipe;
        }
        if (n == 0) {
            break;
        }
        len += (size_t)n;
    }
    if (len > MLS_AUTH_KEY_MAX_FILE_BYTES) {
        mls_err_set(err, "cluster key file %s is over %u bytes", path,
                    MLS_AUTH_KEY_MAX_FILE_BYTES);
        st = MLS_ERR_INVALID_ARG;
        goto out_wipe;
    }
    st = mls_auth_key_from_bytes(buf, len, key_p, err);
    if (st != MLS_OK) {
        mls_err_set(err, "cluster key file %s: %zu bytes, at least %u are needed", path, len,
                    MLS_AUTH_KEY_MIN_BYTES);
    }
out_wipe:
    sodium_memzero(buf, sizeof(buf));
out_close:
    close(fd);
    return st;
}

mls_status mls_auth_key_file_create(const char *path, mls_err *err)
{
    uint8_t raw[32];
    char hex[2 * sizeof(raw) + 2];
    size_t len;
    int fd;

    mls_auth_init();
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        mls_err_set(err, "cannot create cluster key file %s: %s", path, strerror(errno));
        return MLS_ERR_IO;
    }
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2hex(hex, sizeof(hex), raw, sizeof(raw));
    len = strlen(hex);
    hex[len++] = '\n';
    if (write(fd, hex, len) != (ssize_t)len || fsync(fd) != 0) {
        mls_err_set(err, "cannot write cluster key file %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        sodium_memzero(raw, sizeof(raw));
        sodium_memzero(hex, sizeof(hex));
        return MLS_ERR_IO;
    }
    close(fd);
    sodium_memzero(raw, sizeof(raw));
    sodium_memzero(hex, sizeof(hex));
    return MLS_OK;
}

void mls_auth_nonce(uint8_t nonce_p[MLS_AUTH_NONCE_BYTES])
{
    mls_auth_init();
    randombytes_buf(nonce_p, MLS_AUTH_NONCE_BYTES);
}

/* BLAKE2b-256 keyed with the cluster key over label | tag | dialer nonce |
 * acceptor nonce | version (u32 LE). */
static void mls_auth_mac(const mls_auth_key *key, const char *label, uint8_t tag,
                         const uint8_t dn[MLS_AUTH_NONCE_BYTES],
                         const uint8_t an[MLS_AUTH_NONCE_BYTES], uint32_t version,
                         uint8_t out[32])
{
    crypto_generichash_state s;
    uint8_t v[4] = {(uint8_t)version, (uint8_t)(version >> 8), (uint8_t)(version >> 16),
                    (uint8_t)(version >> 24)};

    crypto_generichash_init(&s, key->bytes, sizeof(key->bytes), 32);
    crypto_generichash_update(&s, (const uint8_t *)label, strlen(label));
    crypto_generichash_update(&s, &tag, 1);
    crypto_generichash_update(&s, dn, MLS_AUTH_NONCE_BYTES);
    crypto_generichash_update(&s, an, MLS_AUTH_NONCE_BYTES);
    crypto_generichash_update(&s, v, sizeof(v));
    crypto_generichash_final(&s, out, 32);
}

void mls_auth_proof(const mls_auth_key *key, mls_auth_role role,
                    const uint8_t dialer_nonce[MLS_AUTH_NONCE_BYTES],
                    const uint8_t acceptor_nonce[MLS_AUTH_NONCE_BYTES], uint32_t version,
                    uint8_t proof_p[MLS_AUTH_PROOF_BYTES])
{
    mls_auth_mac(key, mls_auth_proof_label, (uint8_t)role, dialer_nonce, acceptor_nonce, version,
                 proof_p);
}

bool mls_auth_proof_check(const mls_auth_key *key, mls_auth_role role,
                          const uint8_t dialer_nonce[MLS_AUTH_NONCE_BYTES],
                          const uint8_t acceptor_nonce[MLS_AUTH_NONCE_BYTES], uint32_t version,
                          const uint8_t *proof, size_t len)
{
    uint8_t want[MLS_AUTH_PROOF_BYTES];
    bool ok;

    if (proof == NULL || len != MLS_AUTH_PROOF_BYTES) {
        return false;
    }
    mls_auth_proof(key, role, dialer_nonce, acceptor_nonce, version, want);
    ok = crypto_verify_32(want, proof) == 0;
    sodium_memzero(want, sizeof(want));
    return ok;
}

void mls_auth_session_init(const mls_auth_key *key, mls_auth_role own_role,
                           const uint8_t dialer_nonce[MLS_AUTH_NONCE_BYTES],
                           const uint8_t acceptor_nonce[MLS_AUTH_NONCE_BYTES],
                           mls_auth_session *session_p)
{
    /* direction tag: the role of the side that sends with the key */
    mls_auth_role peer =
        own_role == MLS_AUTH_ROLE_DIALER ? MLS_AUTH_ROLE_ACCEPTOR : MLS_AUTH_ROLE_DIALER;

    mls_auth_mac(key, mls_auth_session_label, (uint8_t)own_role, dialer_nonce, acceptor_nonce, 0,
                 session_p->tx_key);
    mls_auth_mac(key, mls_auth_session_label, (uint8_t)peer, dialer_nonce, acceptor_nonce, 0,
                 session_p->rx_key);
    session_p->tx_seq = 0;
    session_p->rx_seq = 0;
}

static void mls_auth_seq_nonce(uint64_t seq, uint8_t n[crypto_aead_chacha20poly1305_ietf_NPUBBYTES])
{
    memset(n, 0, crypto_aead_chacha20poly1305_ietf_NPUBBYTES);
    for (int i = 0; i < 8; i++) {
        n[i] = (uint8_t)(seq >> (8 * i));
    }
}

void mls_auth_seal(mls_auth_session *s, uint8_t *buf, size_t len)
{
    uint8_t n[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
    unsigned long long clen = 0;

    mls_auth_seq_nonce(s->tx_seq++, n);
    crypto_aead_chacha20poly1305_ietf_encrypt(buf, &clen, buf, len, NULL, 0, NULL, n, s->tx_key);
}

mls_status mls_auth_open(mls_auth_session *s, const uint8_t *sealed, size_t len, uint8_t *out,
                         mls_err *err)
{
    uint8_t n[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
    unsigned long long mlen = 0;

    if (len < MLS_AUTH_TAG_BYTES) {
        mls_err_set(err, "sealed frame of %zu bytes is shorter than its tag", len);
        return MLS_ERR_CHECKSUM;
    }
    mls_auth_seq_nonce(s->rx_seq, n);
    if (crypto_aead_chacha20poly1305_ietf_decrypt(out, &mlen, NULL, sealed, len, NULL, 0, n,
                                                  s->rx_key) != 0) {
        mls_err_set(err,
                    "frame %llu does not open with the session key (altered, injected, "
                    "replayed or out of order)",
                    (unsigned long long)s->rx_seq);
        return MLS_ERR_CHECKSUM;
    }
    s->rx_seq++;
    return MLS_OK;
}

void mls_auth_session_clear(mls_auth_session *s)
{
    sodium_memzero(s, sizeof(*s));
}
