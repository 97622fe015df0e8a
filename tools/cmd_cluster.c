/*
 * cmd_cluster.c - `mlaserve cluster up`: a whole cluster on this machine.
 *
 * Starts mlaserve-router and N prefill + M decode nodes (or M colocated nodes)
 * as child processes, waits until the router is ready (a prefill and a decode
 * path), prints the URL and an example request, and stops everything cleanly
 * on Ctrl-C / SIGTERM. The ports are picked once at start (free ones where 0
 * is asked) and kept, and the children are supervised: one that dies is
 * restarted on the same ports and arguments with backoff (0.2 s doubling to
 * 10 s; reset after 30 s of life), and says so - a killed router is back on
 * the same URL and its nodes re-register within seconds.
 * Without --model it serves the project's demo model (generated on first use
 * with `mlaserve genmodel --preset demo`: random weights, a BPE tokenizer
 * trained by the project), so a fresh clone needs nothing else.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mls_auth.h"
#include "mls_cli.h"

#define CL_MAX_CHILDREN 34
#define CL_MAX_ARGS 40
#define CL_BACKOFF_FIRST_MS 200
#define CL_BACKOFF_MAX_MS 10000
#define CL_STABLE_MS 30000 /* a child that lived this long restarts at the first backoff */

typedef struct {
    pid_t pid;            /* 0 while not running */
    char role[16];
    char name[32];
    char *argv[CL_MAX_ARGS]; /* owned copies, NULL-terminated: a restart runs the same */
    uint64_t started_ns;
    uint64_t restart_at_ns; /* while pid == 0: when to start again (0 = never) */
    uint32_t backoff_ms;
    int restarts;
} cl_child;

typedef struct {
    const char *model;
    const char *host;
    const char *kv_dtype;
    const char *state_file;
    int port;      /* router HTTP port (0: a free one, picked once) */
    int node_port; /* the port nodes dial (0: a free one, picked once) */
    int n_prefill;
    int n_decode;
    int threads;
    int kv_pages;
    int max_batch;
    bool colocated;
    const char *key_file;     /* --cluster-key-file, else key_buf */
    char key_dir[64];         /* private directory of a key made here ("" = none) */
    char key_buf[96];
    char bin_dir[PATH_MAX];
    cl_child kids[CL_MAX_CHILDREN];
    int n_kids;
} cl_cluster;

static volatile sig_atomic_t cl_stop;

static void cl_on_signal(int sig)
{
    (void)sig;
    cl_stop = 1;
}

static void cl_usage(FILE *out)
{
    fprintf(out,
            "usage: mlaserve cluster up [options]\n"
            "\n"
            "Start a router and prefill/decode nodes on this machine; Ctrl-C stops them all.\n"
            "\n"
            "  --model DIR        checkpoint with tokenizer.json (default: the demo model in\n"
            "                     models/demo, generated on first use)\n"
            "  --prefill N        prefill nodes (default 1)\n"
            "  --decode M         decode nodes (default 1)\n"
            "  --colocated        M colocated nodes (prefill+decode in one process) instead\n"
            "  --port P           router HTTP port (default 8000; 0 = a free one, kept across\n"
            "                     router restarts)\n"
            "  --node-port P      port the nodes dial (default: a free one, kept)\n"
            "  --host ADDR        listen address (default 127.0.0.1)\n"
            "  --kv-dtype D       f32 | bf16 | fp8 (default bf16)\n"
            "  --kv-pages N       KV pages per node (default 512)\n"
            "  --max-batch N      decode batch per node (default 64)\n"
            "  --threads N        compute threads per node (default: cores / nodes)\n"
            "  --state-file FILE  write the router port and the nodes' pids here\n"
            "  --cluster-key-file FILE  the cluster key every daemon proves (mode 0600);\n"
            "                     default: a fresh one in a private directory, removed at exit\n");
}

static uint64_t cl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Start (or restart) child k from its saved arguments. */
static int cl_start(cl_child *k)
{
    pid_t pid = fork();

    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0); /* Ctrl-C reaches us only; we stop the children in order */
        execv(k->argv[0], k->argv);
        fprintf(stderr, "cluster: cannot run %s: %s\n", k->argv[0], strerror(errno));
        _exit(127);
    }
    k->pid = pid;
    k->started_ns = cl_now_ns();
    k->restart_at_ns = 0;
    return 0;
}

static int cl_spawn(cl_cluster *c, const char *role, const char *name, char *const argv[])
{
    cl_child *k;
    int n = 0;

    if (c->n_kids == CL_MAX_CHILDREN) {
        return -1;
    }
    k = &c->kids[c->n_kids];
    memset(k, 0, sizeof(*k));
    for (; argv[n] != NULL; n++) {
        if (n + 1 == CL_MAX_ARGS || (k->argv[n] = strdup(argv[n])) == NULL) {
            return -1;
        }
    }
    snprintf(k->role, sizeof(k->role), "%s", role);
    snprintf(k->name, sizeof(k->name), "%s", name);
    k->backoff_ms = CL_BACKOFF_FIRST_MS;
    c->n_kids++;
    return cl_start(k);
}

static void cl_free_kids(cl_cluster *c)
{
    for (int i = 0; i < c->n_kids; i++) {
        for (int a = 0; c->kids[i].argv[a] != NULL; a++) {
            free(c->kids[i].argv[a]);
        }
    }
    c->n_kids = 0;
}

/* A free TCP port on host (bound and released: the children bind it next). */
static int cl_free_port(const char *host)
{
    struct sockaddr_in sa = {0};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    if (fd < 0) {
        return -1;
    }
    sa.sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &sa.sin_addr) == 1 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0) {
        port = ntohs(sa.sin_port);
    }
    close(fd);
    return port;
}

static void cl_stop_all(cl_cluster *c)
{
    /* nodes first, router last, so in-flight requests fail cleanly */
    for (int pass = 0; pass < 2; pass++) {
        for (int i = c->n_kids - 1; i >= 0; i--) {
            bool router = strcmp(c->kids[i].role, "router") == 0;
            if (c->kids[i].pid > 0 && router == (pass == 1)) {
                kill(c->kids[i].pid, SIGTERM);
            }
        }
        for (int waited = 0; waited < 50; waited++) {
            bool left = false;
            for (int i = 0; i < c->n_kids; i++) {
                bool router = strcmp(c->kids[i].role, "router") == 0;
                if (c->kids[i].pid > 0 && router == (pass == 1)) {
                    if (waitpid(c->kids[i].pid, NULL, WNOHANG) == c->kids[i].pid) {
                        c->kids[i].pid = 0;
                    } else {
                        left = true;
                    }
                }
            }
            if (!left) {
                break;
            }
            usleep(100000);
        }
    }
    for (int i = 0; i < c->n_kids; i++) {
        if (c->kids[i].pid > 0) {
            kill(c->kids[i].pid, SIGKILL);
            waitpid(c->kids[i].pid, NULL, 0);
            c->kids[i].pid = 0;
        }
    }
}

/* GET path on host:port; the HTTP status, or -1 when nothing answers. */
static int cl_http_get(const char *host, int port, const char *path)
{
    struct sockaddr_in sa = {0};
    char req[256], resp[64];
    int fd = socket(AF_INET, SOCK_STREAM, 0), status = -1;
    ssize_t n;

    if (fd < 0) {
        return -1;
    }
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) == 1 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        int len = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
        if (write(fd, req, (size_t)len) == len && (n = read(fd, resp, sizeof(resp) - 1)) > 12) {
            resp[n] = '\0';
            status = atoi(resp + 9);
        }
    }
    close(fd);
    return status;
}

static int cl_ensure_demo_model(cl_cluster *c, const char *dir)
{
    char path[PATH_MAX], exe[PATH_MAX + 16];
    struct stat sb;

    snprintf(path, sizeof(path), "%.4000s/config.json", dir);
    if (stat(path, &sb) == 0) {
        return 0;
    }
    fprintf(stderr, "cluster: generating the demo model in %s (once)\n", dir);
    snprintf(exe, sizeof(exe), "%s/mlaserve", c->bin_dir);
    {
        char *argv[] = {exe, "genmodel", "--preset", "demo", "--out", (char *)dir, NULL};
        pid_t pid = fork();
        int status;
        if (pid == 0) {
            execv(exe, argv);
            _exit(127);
        }
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "cluster: generating the demo model failed\n");
            return -1;
        }
    }
    return 0;
}

static int cl_parse(int argc, char **argv, cl_cluster *c)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},   {"prefill", required_argument, NULL, 'P'},
        {"decode", required_argument, NULL, 'D'},  {"colocated", no_argument, NULL, 'C'},
        {"port", required_argument, NULL, 'p'},    {"host", required_argument, NULL, 'H'},
        {"kv-dtype", required_argument, NULL, 'k'}, {"kv-pages", required_argument, NULL, 'K'},
        {"max-batch", required_argument, NULL, 'b'}, {"threads", required_argument, NULL, 'j'},
        {"state-file", required_argument, NULL, 's'}, {"help", no_argument, NULL, 'h'},
        {"cluster-key-file", required_argument, NULL, 'Y'}, {"node-port", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0}};
    int o;

    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': c->model = optarg; break;
        case 'P': c->n_prefill = atoi(optarg); break;
        case 'D': c->n_decode = atoi(optarg); break;
        case 'C': c->colocated = true; break;
        case 'p': c->port = atoi(optarg); break;
        case 'H': c->host = optarg; break;
        case 'k': c->kv_dtype = optarg; break;
        case 'K': c->kv_pages = atoi(optarg); break;
        case 'b': c->max_batch = atoi(optarg); break;
        case 'j': c->threads = atoi(optarg); break;
        case 's': c->state_file = optarg; break;
        case 'Y': c->key_file = optarg; break;
        case 'n': c->node_port = atoi(optarg); break;
        case 'h': cl_usage(stdout); return 0;
        default: cl_usage(stderr); return 2;
        }
    }
    if (optind < argc && strcmp(argv[optind], "up") != 0) {
        fprintf(stderr, "cluster: unknown action '%s' (only 'up')\n", argv[optind]);
        return 2;
    }
    if (c->n_decode < 1 || c->n_prefill < (c->colocated ? 0 : 1) || c->n_prefill + c->n_decode > 32 ||
        c->port < 0 || c->port > 65535 || c->node_port < 0 || c->node_port > 65535 || c->kv_pages < 1 || c->max_batch < 1) {
        fprintf(stderr, "cluster: need 1..32 nodes (at least one decode and, unless --colocated, one "
                        "prefill), a valid port, --kv-pages and --max-batch >= 1\n");
        return 2;
    }
    return -1;
}

/* The state file (URL, ports, children with their current pids, the key),
 * replaced whole (write + rename) so a reader never sees half of it. */
static void cl_write_state(const cl_cluster *c, int http_port, int node_port)
{
    char tmp[PATH_MAX + 8];
    FILE *f;

    if (c->state_file == NULL) {
        return;
    }
    snprintf(tmp, sizeof(tmp), "%.4000s.tmp", c->state_file);
    if ((f = fopen(tmp, "w")) == NULL) {
        return;
    }
    fprintf(f, "{\"url\":\"http://%s:%d\",\"http_port\":%d,\"node_port\":%d,\"nodes\":[", c->host, http_port,
            http_port, node_port);
    for (int i = 0; i < c->n_kids; i++) {
        fprintf(f, "%s{\"role\":\"%s\",\"name\":\"%s\",\"pid\":%d}", i ? "," : "", c->kids[i].role,
                c->kids[i].name, (int)c->kids[i].pid);
    }
    fprintf(f, "],\"cluster_key_file\":\"%s\"}\n", c->key_file);
    if (fclose(f) != 0 || rename(tmp, c->state_file) != 0) {
        unlink(tmp);
    }
}

/* The cluster key: --cluster-key-file, or a fresh one (mode 0600) in a new
 * private directory that cl_key_remove deletes again. */
static int cl_key_setup(cl_cluster *c)
{
    mls_err err = {{0}};

    if (c->key_file != NULL) {
        return 0;
    }
    snprintf(c->key_dir, sizeof(c->key_dir), "/tmp/mlaserve-cluster-XXXXXX");
    if (mkdtemp(c->key_dir) == NULL) {
        fprintf(stderr, "cluster: cannot make a directory for the cluster key: %s\n", strerror(errno));
        c->key_dir[0] = '\0';
        return -1;
    }
    snprintf(c->key_buf, sizeof(c->key_buf), "%s/cluster.key", c->key_dir);
    if (mls_auth_key_file_create(c->key_buf, &err) != MLS_OK) {
        fprintf(stderr, "cluster: %s\n", err.msg);
        rmdir(c->key_dir);
        c->key_dir[0] = '\0';
        return -1;
    }
    c->key_file = c->key_buf;
    return 0;
}

static void cl_key_remove(cl_cluster *c)
{
    if (c->key_dir[0] != '\0') {
        unlink(c->key_buf);
        rmdir(c->key_dir);
        c->key_dir[0] = '\0';
    }
}

/*
 * Until a signal: restart every child that dies, on its saved arguments, after
 * its backoff (doubled on each quick death, reset once it lived CL_STABLE_MS),
 * saying so; the state file follows the new pids.
 */
static void cl_supervise(cl_cluster *c, int http_port, int node_port)
{
    while (!cl_stop) {
        uint64_t now = cl_now_ns();
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);

        for (int i = 0; pid > 0 && i < c->n_kids; i++) {
            cl_child *k = &c->kids[i];
            if (k->pid != pid) {
                continue;
            }
            if (now - k->started_ns >= (uint64_t)CL_STABLE_MS * 1000000ull) {
                k->backoff_ms = CL_BACKOFF_FIRST_MS;
            }
            fprintf(stderr, "cluster: %s exited (%s %d); restarting in %u ms\n", k->name,
                    WIFSIGNALED(status) ? "signal" : "status",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), k->backoff_ms);
            k->pid = 0;
            k->restart_at_ns = now + (uint64_t)k->backoff_ms * 1000000ull;
            k->backoff_ms = k->backoff_ms * 2 < CL_BACKOFF_MAX_MS ? k->backoff_ms * 2 : CL_BACKOFF_MAX_MS;
        }
        for (int i = 0; i < c->n_kids; i++) {
            cl_child *k = &c->kids[i];
            if (k->pid == 0 && k->restart_at_ns != 0 && now >= k->restart_at_ns) {
                if (cl_start(k) == 0) {
                    k->restarts++;
                    fprintf(stderr, "cluster: %s restarted (pid %d, restart %d)\n", k->name, (int)k->pid,
                            k->restarts);
                    cl_write_state(c, http_port, node_port);
                } else {
                    k->restart_at_ns = now + (uint64_t)k->backoff_ms * 1000000ull;
                }
            }
        }
        if (pid <= 0) {
            usleep(100000);
        }
    }
}

int mls_cmd_cluster(int argc, char **argv)
{
    cl_cluster c = {0};
    char exe[PATH_MAX], router_addr[64], model_buf[PATH_MAX];
    int http_port = -1, node_port = -1, rc, n_nodes, threads;
    struct sigaction sa = {0};
    ssize_t len;

    c.host = "127.0.0.1";
    c.kv_dtype = "bf16";
    c.port = 8000;
    c.n_prefill = 1;
    c.n_decode = 1;
    c.kv_pages = 512;
    c.max_batch = 64;
    if ((rc = cl_parse(argc, argv, &c)) >= 0) {
        return rc;
    }
    if (c.colocated) {
        c.n_prefill = 0;
    }
    len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (len <= 0) {
        fprintf(stderr, "cluster: cannot find my own binary\n");
        return 1;
    }
    exe[len] = '\0';
    snprintf(c.bin_dir, sizeof(c.bin_dir), "%s", dirname(exe));
    if (c.model == NULL) {
        /* the demo model lives beside the build: <repo>/models/demo */
        snprintf(model_buf, sizeof(model_buf), "%.4000s/../../models/demo", c.bin_dir);
        c.model = model_buf;
        if (cl_ensure_demo_model(&c, c.model) != 0) {
            return 1;
        }
    }
    n_nodes = c.n_prefill + c.n_decode;
    threads = c.threads > 0 ? c.threads : (int)(sysconf(_SC_NPROCESSORS_ONLN) / n_nodes);
    threads = threads > 0 ? threads : 1;

    sa.sa_handler = cl_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (cl_key_setup(&c) != 0) {
        return 1;
    }
    /* the ports, once: the router keeps them across restarts, so its URL and
     * the address its nodes dial never change */
    http_port = c.port > 0 ? c.port : cl_free_port(c.host);
    node_port = c.node_port > 0 ? c.node_port : cl_free_port(c.host);
    if (http_port <= 0 || node_port <= 0 || http_port == node_port) {
        fprintf(stderr, "cluster: cannot find free ports on %s\n", c.host);
        cl_key_remove(&c);
        return 1;
    }
    {
        char bin[PATH_MAX + 32], port[16], nport[16];
        snprintf(bin, sizeof(bin), "%s/mlaserve-router", c.bin_dir);
        snprintf(port, sizeof(port), "%d", http_port);
        snprintf(nport, sizeof(nport), "%d", node_port);
        char *argv_r[] = {bin, "--tokenizer", (char *)c.model, "--host", (char *)c.host, "--port", port,
                          "--node-port", nport, "--cluster-key-file", (char *)c.key_file,
                          c.colocated ? "--colocated-only" : NULL, NULL};
        if (cl_spawn(&c, "router", "router", argv_r) != 0) {
            cl_stop_all(&c);
            cl_free_kids(&c);
            cl_key_remove(&c);
            return 1;
        }
    }
    snprintf(router_addr, sizeof(router_addr), "%s:%d", c.host, node_port);
    for (int i = 0; i < n_nodes; i++) {
        const char *role = c.colocated ? "colocated" : (i < c.n_prefill ? "prefill" : "decode");
        char bin[PATH_MAX + 32], name[32], pages[16], batch[16], thr[16];
        snprintf(bin, sizeof(bin), "%s/mlaserve-%s", c.bin_dir, strcmp(role, "prefill") == 0 ? "prefill" : "decode");
        snprintf(name, sizeof(name), "%s-%d", role, i);
        snprintf(pages, sizeof(pages), "%d", c.kv_pages);
        snprintf(batch, sizeof(batch), "%d", c.max_batch);
        snprintf(thr, sizeof(thr), "%d", threads);
        char *argv_n[] = {bin, "--model", (char *)c.model, "--router", router_addr, "--role", (char *)role,
                          "--node-id", name, "--listen", (char *)c.host, "--kv-dtype", (char *)c.kv_dtype,
                          "--kv-pages", pages, "--max-batch", batch, "--threads", thr,
                          "--cluster-key-file", (char *)c.key_file, NULL};
        if (cl_spawn(&c, role, name, argv_n) != 0) {
            cl_stop_all(&c);
            cl_free_kids(&c);
            cl_key_remove(&c);
            return 1;
        }
    }
    /* ready when the router has a prefill and a decode path */
    for (int i = 0; i < 600 && !cl_stop && cl_http_get(c.host, http_port, "/ready") != 200; i++) {
        usleep(100000);
    }
    if (cl_stop || cl_http_get(c.host, http_port, "/ready") != 200) {
        fprintf(stderr, "cluster: the nodes did not come up\n");
        cl_stop_all(&c);
        cl_free_kids(&c);
        cl_key_remove(&c);
        return 1;
    }
    cl_write_state(&c, http_port, node_port);
    {
        char nodes[64], real[PATH_MAX];
        if (c.colocated) {
            snprintf(nodes, sizeof(nodes), "%d colocated node%s", c.n_decode, c.n_decode > 1 ? "s" : "");
        } else {
            snprintf(nodes, sizeof(nodes), "%d prefill + %d decode nodes", c.n_prefill, c.n_decode);
        }
        printf("mlaserve cluster up: router + %s, model %s\n"
               "  API:     http://%s:%d/v1  (OpenAI-compatible)\n"
               "  metrics: http://%s:%d/metrics\n"
               "  try:     curl http://%s:%d/v1/chat/completions -H 'Content-Type: application/json' \\\n"
               "             -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}],\"max_tokens\":32}'\n"
               "  nodes:   more can join: mlaserve-decode --model DIR --router %s:%d \\\n"
               "             --cluster-key-file %s\n"
               "Ctrl-C stops the cluster; a child that dies is restarted.\n",
               nodes, realpath(c.model, real) ? real : c.model, c.host, http_port, c.host, http_port, c.host,
               http_port, c.host, node_port, c.key_file);
    }
    fflush(stdout);
    cl_supervise(&c, http_port, node_port);
    fprintf(stderr, "cluster: stopping\n");
    cl_stop_all(&c);
    cl_free_kids(&c);
    if (c.state_file != NULL) {
        unlink(c.state_file);
    }
    cl_key_remove(&c);
    return 0;
}
