/*
 * podnet CNI shim: the same job as cni/shim.py's run(), without an interpreter start.
 *
 * A CNI runtime execs one process per plugin call; starting CPython alone takes longer than
 * the Go plugins' whole ADD. This shim forwards the call to the node's podnet CNI daemon
 * (which already holds every import), and when no daemon listens it execs the Python
 * plugin itself, untouched stdin included. All CNI logic stays in Python; this file only
 * moves bytes. Wire format: see cni/shim.py.
 *
 * Built by `podnet cni install` with the paths baked in:
 *   -DPODNET_SOCKET="..." -DPODNET_PYTHON="..." -DPODNET_ROOT="..."
 * The plugin name is the executable's basename (one binary, installed under every name).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

static void put32(unsigned char *p, uint32_t v) {
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Growable byte buffer. */
struct buf { unsigned char *p; size_t len, cap; };

static void need(struct buf *b, size_t n) {
    if (b->len + n <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) { perror("podnet shim"); exit(1); }
    b->cap = cap;
}

static void append(struct buf *b, const void *data, size_t n) {
    need(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void append_chunk(struct buf *b, const void *data, size_t n) {
    unsigned char len[4];
    put32(len, (uint32_t)n);
    append(b, len, 4);
    append(b, data, n);
}

static int read_all(int fd, struct buf *b) {
    for (;;) {
        need(b, 65536);
        ssize_t n = read(fd, b->p + b->len, b->cap - b->len);
        if (n == 0) return 0;
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        b->len += (size_t)n;
    }
}

static int read_exact(int fd, unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r == 0) { errno = ECONNRESET; return -1; }
        if (r < 0) { if (errno == EINTR) continue; return -1; }
        p += r; n -= (size_t)r;
    }
    return 0;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= (size_t)w;
    }
    return 0;
}

/* No daemon: run the Python plugin in this process's place (stdin not yet read). */
static void exec_standalone(const char *plugin) {
    char code[1024];
    snprintf(code, sizeof code,
             "import sys; sys.path.insert(0, %s); from cni.shim import standalone; "
             "sys.exit(standalone(sys.argv[1]))", "'" PODNET_ROOT "'");
    execl(PODNET_PYTHON, PODNET_PYTHON, "-IS", "-c", code, plugin, (char *)NULL);
    perror("podnet shim: exec " PODNET_PYTHON);
    exit(1);
}

static int fail(const char *what) {
    /* A half-finished exchange: answer in the spec's format so the runtime retries. */
    printf("{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"podnet CNI daemon failed "
           "mid-request: %s: %s\"}\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    (void)argc;
    const char *plugin = strrchr(argv[0], '/');
    plugin = plugin ? plugin + 1 : argv[0];
    const char *standalone = getenv("PODNET_CNI_STANDALONE");
    if (standalone && strcmp(standalone, "1") == 0) exec_standalone(plugin);

    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    strncpy(addr.sun_path, PODNET_SOCKET, sizeof addr.sun_path - 1);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        if (sock >= 0) close(sock);
        exec_standalone(plugin);
    }

    struct buf env = {0}, in = {0}, msg = {0};
    for (char **e = environ; *e; e++) append(&env, *e, strlen(*e) + 1);
    if (read_all(0, &in) < 0) return fail("reading stdin");
    append(&msg, "PNC1", 4);
    append_chunk(&msg, plugin, strlen(plugin));
    append_chunk(&msg, env.p, env.len);
    append_chunk(&msg, in.p, in.len);

    int nsfd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) return fail("opening own netns");
    char control[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = { .iov_base = msg.p, .iov_len = msg.len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = control, .msg_controllen = sizeof control };
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &nsfd, sizeof(int));
    ssize_t sent = sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (sent < 0) return fail("sending");
    if ((size_t)sent < msg.len && write_all(sock, msg.p + sent, msg.len - (size_t)sent) < 0)
        return fail("sending");
    close(nsfd);

    unsigned char head[8];
    if (read_exact(sock, head, 8) < 0) return fail("reading answer");
    uint32_t rc = get32(head), n = get32(head + 4);
    unsigned char *out = malloc(n ? n : 1);
    if (!out || read_exact(sock, out, n) < 0) return fail("reading answer");
    if (write_all(1, out, n) < 0) return 1;
    return (int)rc;
}
