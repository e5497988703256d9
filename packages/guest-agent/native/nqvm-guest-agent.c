/*
 * nqvm-guest-agent: runs inside an nqvm microVM and serves the host-to-guest channel
 * (virtio-serial with QEMU, vsock with Firecracker, a unix socket for tests): exec in the
 * guest, and in container mode the container's workload with its logs and exit code.
 *
 * The wire protocol is documented in ../README.md and ../src/protocol.ts; the constants below
 * must stay in step with protocol.ts.
 *
 * One thread, one poll() loop; no fd is ever written or read in blocking mode (but stderr
 * diagnostics). Build: gcc -std=gnu11 -static -Os -Wall -Wextra -Werror -o nqvm-guest-agent
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define AGENT "nqvm-guest-agent"

/* ---- protocol: keep in step with src/protocol.ts ---- */
#define PROTOCOL_VERSION "1"
#define FRAME_HEADER 9 /* u32 BE length of what follows | u8 type | u32 BE channel */
#define MAX_PAYLOAD 65536
#define TOKEN_MIN 16
#define TOKEN_MAX 128

enum frame_type {
  T_HELLO = 0x01,
  T_AUTH = 0x02,
  T_AUTH_OK = 0x03,
  T_ERROR = 0x04,
  T_SET_TOKEN = 0x05,
  T_PING = 0x06,
  T_PONG = 0x07,
  T_EXEC = 0x10,
  T_STARTED = 0x11,
  T_STDIN = 0x12,
  T_STDIN_EOF = 0x13,
  T_STDOUT = 0x14,
  T_STDERR = 0x15,
  T_EXIT = 0x16,
  T_SIGNAL = 0x17,
  T_RESIZE = 0x18,
  T_LOG = 0x20,
  T_WORKLOAD_STARTED = 0x21,
  T_WORKLOAD_EXIT = 0x22,
  T_EXIT_ACK = 0x23,
  T_STOP = 0x24,
};

enum { HELLO_VERSION = 1, HELLO_MODE = 2 };
enum { INFO_VERSION = 1, INFO_MODE = 2, INFO_HOSTNAME = 3, INFO_UPTIME = 4, INFO_PID = 5 };
enum { ERR_CODE = 1, ERR_MESSAGE = 2 };
enum { EXEC_ARG = 1, EXEC_ENV = 2, EXEC_CWD = 3, EXEC_USER = 4, EXEC_TTY = 5, EXEC_STDIN = 6 };
enum { EXIT_EXITED = 0, EXIT_SIGNAL = 1, EXIT_UNSTARTABLE = 2 };
enum { LOG_STDOUT = 1, LOG_STDERR = 2, LOG_NQVM = 3 };

/* ---- limits ---- */
#define MAX_CHANNELS 64
#define READ_CHUNK (32 * 1024)
#define CHANNEL_OUT_LIMIT (1024 * 1024)  /* per channel, queued towards the host */
#define LOG_BUFFER_LIMIT (1024 * 1024)   /* container frames kept while the host is away */
#define LOG_LINE_MAX (16 * 1024)
#define STDIN_BACKLOG_LIMIT (16 * 1024 * 1024)
#define SESSION_OUT_LIMIT (4 * 1024 * 1024) /* control frames (PONG...): stop reading the host */
#define CONSOLE_LIMIT (256 * 1024)
#define DRAIN_MS 2000
#define DEVICE_BACKOFF_MS 200
#define WAIT_OPEN_MS 10000
#define ACK_WAIT_CONNECTED_MS 5000
#define ACK_WAIT_AWAY_MS 15000
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define VIRTIO_PORT_NAME "org.nqvm.agent"

/* ---- small helpers ---- */

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...) {
  char line[1024];
  size_t n = (size_t)snprintf(line, sizeof line, AGENT ": ");
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
  va_end(ap);
  n = m < 0 ? n : n + (size_t)m;
  if (n > sizeof line - 2) n = sizeof line - 2;
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, n);
  (void)w;
}

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...) {
  char msg[900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  logmsg("%s", msg);
  exit(code);
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) die(1, "out of memory");
  return q;
}

static char *xstrndup(const char *s, size_t n) {
  char *d = xrealloc(NULL, n + 1);
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static void put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static void set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Growable byte buffer, used to build payloads and as stdin / console backlogs. */
struct buf {
  uint8_t *p;
  size_t len, cap, off; /* off: bytes already consumed from the front (backlogs) */
};

static void buf_put(struct buf *b, const void *d, size_t n) {
  if (b->len + n > b->cap) {
    b->cap = (b->len + n) * 2 + 64;
    b->p = xrealloc(b->p, b->cap);
  }
  if (n) memcpy(b->p + b->len, d, n);
  b->len += n;
}

static void buf_u8(struct buf *b, uint8_t v) { buf_put(b, &v, 1); }

static void buf_u32(struct buf *b, uint32_t v) {
  uint8_t p[4];
  put_u32(p, v);
  buf_put(b, p, 4);
}

static void buf_u64(struct buf *b, uint64_t v) {
  buf_u32(b, (uint32_t)(v >> 32));
  buf_u32(b, (uint32_t)v);
}

static void buf_tlv(struct buf *b, uint8_t tag, const void *d, size_t n) {
  buf_u8(b, tag);
  buf_u32(b, (uint32_t)n);
  buf_put(b, d, n);
}

static void buf_tlv_str(struct buf *b, uint8_t tag, const char *s) { buf_tlv(b, tag, s, strlen(s)); }

static void buf_free(struct buf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* Drops the consumed front of a backlog once it is large. */
static void buf_compact(struct buf *b) {
  if (b->off == b->len) {
    b->off = b->len = 0;
  } else if (b->off > 64 * 1024) {
    memmove(b->p, b->p + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
  }
}

/* NULL-terminated vector of strings (argv, environments). */
struct strv {
  char **v;
  size_t n, cap;
};

static void strv_push(struct strv *s, const char *str, size_t len) {
  if (s->n + 2 > s->cap) {
    s->cap = s->cap * 2 + 8;
    s->v = xrealloc(s->v, s->cap * sizeof *s->v);
  }
  s->v[s->n++] = xstrndup(str, len);
  s->v[s->n] = NULL;
}

static void strv_free(struct strv *s) {
  for (size_t i = 0; i < s->n; i++) free(s->v[i]);
  free(s->v);
  memset(s, 0, sizeof *s);
}

static void strv_copy(struct strv *dst, const struct strv *src) {
  for (size_t i = 0; i < src->n; i++) strv_push(dst, src->v[i], strlen(src->v[i]));
}

/* Splits NUL-separated data (a trailing NUL is optional). */
static void strv_split_nul(struct strv *s, const char *data, size_t len) {
  size_t start = 0;
  for (size_t i = 0; i <= len; i++) {
    if (i == len || data[i] == 0) {
      if (i > start || (i < len)) strv_push(s, data + start, i - start);
      start = i + 1;
    }
  }
}

static size_t env_key_len(const char *kv) {
  const char *eq = strchr(kv, '=');
  return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* Sets "K=V" in env: replaces an entry with the same key unless only_if_absent. */
static void env_set(struct strv *env, const char *kv, bool only_if_absent) {
  size_t k = env_key_len(kv);
  for (size_t i = 0; i < env->n; i++) {
    if (env_key_len(env->v[i]) == k && strncmp(env->v[i], kv, k) == 0) {
      if (only_if_absent) return;
      free(env->v[i]);
      env->v[i] = xstrndup(kv, strlen(kv));
      return;
    }
  }
  strv_push(env, kv, strlen(kv));
}

static void env_set_pair(struct strv *env, const char *k, const char *v, bool only_if_absent) {
  char *kv = xrealloc(NULL, strlen(k) + strlen(v) + 2);
  sprintf(kv, "%s=%s", k, v);
  env_set(env, kv, only_if_absent);
  free(kv);
}

static const char *env_get(char *const *env, const char *key) {
  size_t k = strlen(key);
  for (; env && *env; env++)
    if (strncmp(*env, key, k) == 0 && (*env)[k] == '=') return *env + k + 1;
  return NULL;
}

/* Reads a whole (small) file; NUL-terminated. NULL with errno on failure. */
static char *read_file(const char *path, size_t *len_out) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  struct buf b = {0};
  char chunk[4096];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      buf_free(&b);
      errno = e;
      return NULL;
    }
    if (n == 0) break;
    buf_put(&b, chunk, (size_t)n);
    if (b.len > 16 * 1024 * 1024) {
      close(fd);
      buf_free(&b);
      errno = EFBIG;
      return NULL;
    }
  }
  close(fd);
  buf_u8(&b, 0);
  if (len_out) *len_out = b.len - 1;
  return (char *)b.p;
}

static void trim(char *s) {
  size_t n = strlen(s);
  while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
  size_t i = 0;
  while (s[i] && isspace((unsigned char)s[i])) i++;
  memmove(s, s + i, n - i + 1);
}

static bool parse_uint(const char *s, unsigned long max, unsigned long *out) {
  if (!*s) return false;
  unsigned long v = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return false;
    v = v * 10 + (unsigned long)(*s - '0');
    if (v > max) return false;
  }
  *out = v;
  return true;
}

/* ---- users: /etc/passwd and /etc/group are parsed here (static glibc NSS is unreliable) ---- */

#define MAX_GROUPS 64

struct ident {
  uid_t uid;
  gid_t gid;
  gid_t groups[MAX_GROUPS];
  int ngroups;
  bool in_passwd;
  char name[256];
  char home[PATH_MAX];
};

/* Splits a colon-separated line in place into at most max fields; returns the count. */
static int split_fields(char *line, char **f, int max) {
  int n = 0;
  f[n++] = line;
  for (char *p = line; *p && n < max; p++)
    if (*p == ':') {
      *p = 0;
      f[n++] = p + 1;
    }
  return n;
}

/* Looks a user up by name (name != NULL) or by uid. */
static bool passwd_find(const char *name, uid_t uid, struct ident *id) {
  char *data = read_file("/etc/passwd", NULL);
  if (!data) return false;
  bool found = false;
  for (char *line = strtok(data, "\n"); line && !found; line = strtok(NULL, "\n")) {
    char *f[7];
    if (split_fields(line, f, 7) < 7) continue;
    unsigned long u, g;
    if (!parse_uint(f[2], UINT32_MAX - 1, &u) || !parse_uint(f[3], UINT32_MAX - 1, &g)) continue;
    if (name ? strcmp(f[0], name) != 0 : (uid_t)u != uid) continue;
    id->uid = (uid_t)u;
    id->gid = (gid_t)g;
    id->in_passwd = true;
    snprintf(id->name, sizeof id->name, "%s", f[0]);
    snprintf(id->home, sizeof id->home, "%s", *f[5] ? f[5] : "/");
    found = true;
  }
  free(data);
  return found;
}

static bool group_find(const char *name, gid_t *gid) {
  char *data = read_file("/etc/group", NULL);
  if (!data) return false;
  bool found = false;
  for (char *line = strtok(data, "\n"); line && !found; line = strtok(NULL, "\n")) {
    char *f[4];
    unsigned long g;
    if (split_fields(line, f, 4) < 3 || strcmp(f[0], name) != 0) continue;
    if (!parse_uint(f[2], UINT32_MAX - 1, &g)) continue;
    *gid = (gid_t)g;
    found = true;
  }
  free(data);
  return found;
}

static void add_group(struct ident *id, gid_t g) {
  for (int i = 0; i < id->ngroups; i++)
    if (id->groups[i] == g) return;
  if (id->ngroups < MAX_GROUPS) id->groups[id->ngroups++] = g;
}

/* The supplementary groups: every /etc/group entry listing the user as a member. */
static void add_member_groups(struct ident *id) {
  char *data = read_file("/etc/group", NULL);
  if (!data) return;
  char *save = NULL;
  for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *f[4];
    unsigned long g;
    if (split_fields(line, f, 4) < 4 || !parse_uint(f[2], UINT32_MAX - 1, &g)) continue;
    char *msave = NULL;
    for (char *m = strtok_r(f[3], ",", &msave); m; m = strtok_r(NULL, ",", &msave)) {
      trim(m);
      if (strcmp(m, id->name) == 0) add_group(id, (gid_t)g);
    }
  }
  free(data);
}

/* "uid", "uid:gid", "name" or "name:group". Returns false with err filled. */
static bool resolve_user(const char *spec, struct ident *id, char *err, size_t errlen) {
  memset(id, 0, sizeof *id);
  char user[256], *group = NULL;
  snprintf(user, sizeof user, "%s", spec);
  char *colon = strchr(user, ':');
  if (colon) {
    *colon = 0;
    group = colon + 1;
  }
  unsigned long n;
  if (!*user) {
    snprintf(err, errlen, "bad user \"%s\"", spec);
    return false;
  }
  if (parse_uint(user, UINT32_MAX - 1, &n)) {
    if (!passwd_find(NULL, (uid_t)n, id)) {
      id->uid = (uid_t)n;
      id->gid = 0;
      snprintf(id->home, sizeof id->home, "/");
    }
  } else if (!passwd_find(user, 0, id)) {
    snprintf(err, errlen, "no user %s", user);
    return false;
  }
  if (group && *group) {
    if (parse_uint(group, UINT32_MAX - 1, &n)) {
      id->gid = (gid_t)n;
    } else if (!group_find(group, &id->gid)) {
      snprintf(err, errlen, "no group %s", group);
      return false;
    }
  }
  add_group(id, id->gid);
  if (id->in_passwd) add_member_groups(id);
  return true;
}

/* Adds HOME, USER and LOGNAME from the user's passwd entry. */
static void env_for_user(struct strv *env, const struct ident *id, bool only_if_absent) {
  env_set_pair(env, "HOME", id->home, only_if_absent);
  if (id->in_passwd) {
    env_set_pair(env, "USER", id->name, only_if_absent);
    env_set_pair(env, "LOGNAME", id->name, only_if_absent);
  }
}

/* ---- spawning a process (exec channels and the container workload) ---- */

struct spawn_spec {
  char *const *argv;
  char *const *envp;
  const char *cwd;
  const struct ident *user; /* NULL: keep the agent's */
  bool tty;
  uint16_t rows, cols;
  bool want_stdin;
};

struct spawned {
  pid_t pid;
  int in_fd, out_fd, err_fd; /* tty: out_fd is the pty master, in_fd a duplicate of it */
};

enum { STAGE_SETUP = 1, STAGE_USER, STAGE_CWD, STAGE_EXEC };
struct child_error {
  int stage, err;
};

static void child_fail(int errfd, int stage, int err) {
  struct child_error ce = {stage, err};
  ssize_t w = write(errfd, &ce, sizeof ce);
  (void)w;
  _exit(127);
}

/* execvpe with the PATH of envp (glibc's uses the caller's environment). */
static void child_exec(char *const argv[], char *const envp[], int errfd) {
  const char *file = argv[0];
  if (strchr(file, '/')) {
    execve(file, argv, envp);
    child_fail(errfd, STAGE_EXEC, errno);
  }
  const char *path = env_get(envp, "PATH");
  if (!path) path = DEFAULT_PATH;
  int saved = ENOENT;
  char full[PATH_MAX];
  while (*path) {
    const char *end = strchrnul(path, ':');
    int dlen = (int)(end - path);
    snprintf(full, sizeof full, "%.*s/%s", dlen ? dlen : 1, dlen ? path : ".", file);
    execve(full, argv, envp);
    if (errno == EACCES) {
      saved = EACCES;
    } else if (errno != ENOENT && errno != ENOTDIR) {
      saved = errno;
      break;
    }
    path = *end ? end + 1 : end;
  }
  child_fail(errfd, STAGE_EXEC, saved);
}

static void child_main(const struct spawn_spec *s, int in_fd, int out_fd, int err_fd, int errfd) {
  struct sigaction dfl = {.sa_handler = SIG_DFL};
  for (int sig = 1; sig < NSIG; sig++) sigaction(sig, &dfl, NULL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  if (setsid() < 0) child_fail(errfd, STAGE_SETUP, errno);
  if (s->tty && ioctl(out_fd, TIOCSCTTY, 0) < 0) child_fail(errfd, STAGE_SETUP, errno);
  if (in_fd < 0 && (in_fd = open("/dev/null", O_RDONLY)) < 0) child_fail(errfd, STAGE_SETUP, errno);
  if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
    child_fail(errfd, STAGE_SETUP, errno);
  if (s->user) {
    const struct ident *u = s->user;
    bool same = u->uid == geteuid() && u->gid == getegid();
    if (!(same && geteuid() != 0)) {
      if (setgroups((size_t)u->ngroups, u->groups) < 0 || setgid(u->gid) < 0 || setuid(u->uid) < 0)
        child_fail(errfd, STAGE_USER, errno);
    }
  }
  if (chdir(s->cwd && *s->cwd ? s->cwd : "/") < 0) child_fail(errfd, STAGE_CWD, errno);
  child_exec(s->argv, s->envp, errfd);
}

static int open_pty(uint16_t rows, uint16_t cols, int *master, int *slave) {
  char name[128];
  *master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (*master < 0) return -1;
  if (grantpt(*master) < 0 || unlockpt(*master) < 0 || ptsname_r(*master, name, sizeof name) != 0 ||
      (*slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) {
    int e = errno;
    close_fd(master);
    errno = e;
    return -1;
  }
  struct winsize ws = {.ws_row = rows, .ws_col = cols};
  ioctl(*slave, TIOCSWINSZ, &ws);
  return 0;
}

/*
 * Starts s. Returns 0, or the exit value to report (127 not found / 126 permission) with msg
 * saying why.
 */
static int spawn_process(const struct spawn_spec *s, struct spawned *out, char *msg, size_t msglen) {
  int p_in[2] = {-1, -1}, p_out[2] = {-1, -1}, p_err[2] = {-1, -1}, p_status[2] = {-1, -1};
  int master = -1, slave = -1;
  out->pid = -1;
  out->in_fd = out->out_fd = out->err_fd = -1;
  if (pipe2(p_status, O_CLOEXEC) < 0) goto sys_fail;
  if (s->tty) {
    if (open_pty(s->rows, s->cols, &master, &slave) < 0) {
      snprintf(msg, msglen, "no pty: %s", strerror(errno));
      close_fd(&p_status[0]);
      close_fd(&p_status[1]);
      return 127;
    }
  } else {
    if ((s->want_stdin && pipe2(p_in, O_CLOEXEC) < 0) || pipe2(p_out, O_CLOEXEC) < 0 ||
        pipe2(p_err, O_CLOEXEC) < 0)
      goto sys_fail;
  }
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_SETMASK, &all, &old);
  pid_t pid = fork();
  if (pid == 0) {
    if (s->tty)
      child_main(s, s->want_stdin ? slave : -1, slave, slave, p_status[1]);
    else
      child_main(s, p_in[0], p_out[1], p_err[1], p_status[1]);
  }
  int fork_errno = errno;
  sigprocmask(SIG_SETMASK, &old, NULL);
  close_fd(&p_status[1]);
  close_fd(&slave);
  close_fd(&p_in[0]);
  close_fd(&p_out[1]);
  close_fd(&p_err[1]);
  if (pid < 0) {
    errno = fork_errno;
    goto sys_fail;
  }
  out->pid = pid;
  /* The status pipe closes on a successful execve, or carries why the child failed. */
  struct child_error ce;
  ssize_t n;
  do n = read(p_status[0], &ce, sizeof ce);
  while (n < 0 && errno == EINTR);
  close_fd(&p_status[0]);
  if (n == (ssize_t)sizeof ce) {
    close_fd(&master);
    close_fd(&p_in[1]);
    close_fd(&p_out[0]);
    close_fd(&p_err[0]);
    int code = ce.err == EACCES || ce.err == EPERM ? 126 : 127;
    const char *what = s->argv[0];
    if (ce.stage == STAGE_EXEC && ce.err == ENOENT)
      snprintf(msg, msglen, "no such file: %s", what);
    else if (ce.stage == STAGE_EXEC && ce.err == EACCES)
      snprintf(msg, msglen, "permission denied: %s", what);
    else if (ce.stage == STAGE_EXEC)
      snprintf(msg, msglen, "exec %s: %s", what, strerror(ce.err)), code = 126;
    else if (ce.stage == STAGE_CWD)
      snprintf(msg, msglen, "cwd %s: %s", s->cwd && *s->cwd ? s->cwd : "/", strerror(ce.err));
    else if (ce.stage == STAGE_USER)
      snprintf(msg, msglen, "set user %u:%u: %s", s->user->uid, s->user->gid, strerror(ce.err));
    else
      snprintf(msg, msglen, "setup: %s", strerror(ce.err));
    return code;
  }
  if (s->tty) {
    set_nonblock(master);
    out->out_fd = master;
    out->in_fd = s->want_stdin ? fcntl(master, F_DUPFD_CLOEXEC, 3) : -1;
  } else {
    out->in_fd = p_in[1];
    out->out_fd = p_out[0];
    out->err_fd = p_err[0];
    if (out->in_fd >= 0) set_nonblock(out->in_fd);
    set_nonblock(out->out_fd);
    set_nonblock(out->err_fd);
  }
  return 0;

sys_fail:
  snprintf(msg, msglen, "cannot start: %s", strerror(errno));
  int *fds[] = {&p_in[0], &p_in[1], &p_out[0], &p_out[1], &p_err[0], &p_err[1], &p_status[0], &p_status[1],
                &master, &slave};
  for (size_t i = 0; i < sizeof fds / sizeof *fds; i++) close_fd(fds[i]);
  return 127;
}

/* ---- outgoing frames ---- */

enum frame_kind { FK_CONTROL, FK_CHANNEL, FK_CONTAINER };

struct frame {
  struct frame *next;
  enum frame_kind kind;
  uint64_t serial; /* FK_CHANNEL: the channel it counts against */
  size_t len, off;
  uint8_t data[];
};

struct fqueue {
  struct frame *head, *tail;
  size_t bytes;
};

static struct frame *frame_new(uint8_t type, uint32_t channel, const void *payload, size_t len) {
  struct frame *f = xrealloc(NULL, sizeof *f + FRAME_HEADER + len);
  memset(f, 0, sizeof *f);
  put_u32(f->data, (uint32_t)(len + 5));
  f->data[4] = type;
  put_u32(f->data + 5, channel);
  if (len) memcpy(f->data + FRAME_HEADER, payload, len);
  f->len = FRAME_HEADER + len;
  return f;
}

static void fq_push(struct fqueue *q, struct frame *f) {
  f->next = NULL;
  if (q->tail)
    q->tail->next = f;
  else
    q->head = f;
  q->tail = f;
  q->bytes += f->len;
}

static struct frame *fq_pop(struct fqueue *q) {
  struct frame *f = q->head;
  if (!f) return NULL;
  q->head = f->next;
  if (!q->head) q->tail = NULL;
  q->bytes -= f->len;
  f->next = NULL;
  return f;
}

/* ---- global state ---- */

enum mode { MODE_SERVE, MODE_CONTAINER };
enum transport { TR_NONE, TR_DEVICE, TR_VSOCK, TR_UNIX };

static struct {
  enum mode mode;
  enum transport transport;
  const char *device;
  unsigned long vsock_port;
  const char *unix_path;
  const char *token_file;
  const char *config_dir;
  bool halt;
  int halt_cmd;
} opt = {.halt = true, .halt_cmd = RB_POWER_OFF};

static char token[TOKEN_MAX + 1];
static char token_path[PATH_MAX]; /* where the token came from: SET_TOKEN rewrites it */
static bool is_pid1;
static int sig_pipe[2] = {-1, -1};
static uint8_t iobuf[READ_CHUNK];

struct session {
  int listen_fd;       /* vsock / unix */
  int fd;              /* the connection, or the virtio-serial port */
  bool connected;      /* a host is there (device: POLLHUP is clear) */
  int64_t backoff_until;
  bool authed;
  uint64_t generation; /* bumped whenever the session resets */
  struct fqueue out;
  size_t control_bytes;   /* FK_CONTROL bytes in out */
  size_t container_bytes; /* FK_CONTAINER bytes in out */
  uint8_t in[2 * (FRAME_HEADER + MAX_PAYLOAD)];
  size_t in_len;
};
static struct session sess = {.listen_fd = -1, .fd = -1};

struct channel {
  bool used;
  uint64_t serial;
  uint32_t id;
  pid_t pid;
  bool reaped;
  int status;
  bool tty;
  int in_fd, out_fd, err_fd;
  struct buf in;
  bool in_eof; /* STDIN_EOF received: close stdin once the backlog is written */
  size_t queued;
  int64_t drain_deadline;
};
static struct channel channels[MAX_CHANNELS];
static uint64_t next_serial = 1;

/* Children whose channel is gone (session ended) and that still need reaping. */
static struct {
  pid_t *v;
  size_t n, cap;
} orphans;

struct line_buf {
  char data[LOG_LINE_MAX];
  size_t len;
};

enum workload_state { WL_NONE, WL_RUNNING, WL_DRAINING, WL_WAIT_ACK };

static struct {
  struct strv argv, env;
  char *cwd, *user;
  enum workload_state state;
  pid_t pid;
  bool reaped;
  int status;
  int out_fd, err_fd;
  struct line_buf lines[2];
  int64_t drain_deadline;
  int64_t kill_at; /* STOP: SIGKILL then; 0 = not planned */
  int64_t ack_deadline;
  int exit_kind, exit_value;
  struct fqueue pending; /* LOG / WORKLOAD_* frames while no host is authenticated */
  size_t dropped_bytes;
  uint64_t dropped_ts;
} wl = {.out_fd = -1, .err_fd = -1};

static struct buf console; /* container output copied to the agent's stdout */

/* ---- sending ---- */

static void send_raw(uint8_t type, uint32_t ch, const void *payload, size_t len) {
  if (!sess.connected) return;
  struct frame *f = frame_new(type, ch, payload, len);
  f->kind = FK_CONTROL;
  sess.control_bytes += f->len;
  fq_push(&sess.out, f);
}

static void send_buf(uint8_t type, uint32_t ch, struct buf *b) {
  send_raw(type, ch, b->p, b->len);
  buf_free(b);
}

static void send_error(uint32_t ch, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void send_error(uint32_t ch, const char *code, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct buf b = {0};
  buf_tlv_str(&b, ERR_CODE, code);
  buf_tlv_str(&b, ERR_MESSAGE, msg);
  send_buf(T_ERROR, ch, &b);
}

static void send_channel(struct channel *c, uint8_t type, const void *payload, size_t len) {
  if (!sess.connected) return;
  struct frame *f = frame_new(type, c->id, payload, len);
  f->kind = FK_CHANNEL;
  f->serial = c->serial;
  c->queued += f->len;
  fq_push(&sess.out, f);
}

static const char *mode_name(void) { return opt.mode == MODE_CONTAINER ? "container" : "serve"; }

static void send_hello(void) {
  struct buf b = {0};
  buf_tlv_str(&b, HELLO_VERSION, PROTOCOL_VERSION);
  buf_tlv_str(&b, HELLO_MODE, mode_name());
  send_buf(T_HELLO, 0, &b);
}

static void send_auth_ok(void) {
  char host[256] = "", num[32];
  gethostname(host, sizeof host - 1);
  struct timespec up;
  clock_gettime(CLOCK_BOOTTIME, &up);
  struct buf b = {0};
  buf_tlv_str(&b, INFO_VERSION, PROTOCOL_VERSION);
  buf_tlv_str(&b, INFO_MODE, mode_name());
  buf_tlv_str(&b, INFO_HOSTNAME, host);
  snprintf(num, sizeof num, "%lld", (long long)up.tv_sec);
  buf_tlv_str(&b, INFO_UPTIME, num);
  snprintf(num, sizeof num, "%d", (int)getpid());
  buf_tlv_str(&b, INFO_PID, num);
  send_buf(T_AUTH_OK, 0, &b);
}

static struct frame *log_frame(uint64_t ts, uint8_t stream, const void *data, size_t len) {
  struct buf b = {0};
  buf_u64(&b, ts);
  buf_u8(&b, stream);
  buf_put(&b, data, len);
  struct frame *f = frame_new(T_LOG, 0, b.p, b.len);
  buf_free(&b);
  return f;
}

static bool is_log_frame(const struct frame *f) { return f->data[4] == T_LOG; }

/* Keeps the pending container frames under LOG_BUFFER_LIMIT by dropping the oldest log lines. */
static void trim_pending(void) {
  while (wl.pending.bytes > LOG_BUFFER_LIMIT) {
    struct frame *prev = NULL, *f = wl.pending.head;
    while (f && !is_log_frame(f)) prev = f, f = f->next;
    if (!f) return;
    if (prev)
      prev->next = f->next;
    else
      wl.pending.head = f->next;
    if (wl.pending.tail == f) wl.pending.tail = prev;
    wl.pending.bytes -= f->len;
    wl.dropped_bytes += f->len - FRAME_HEADER - 9;
    uint8_t *ts = f->data + FRAME_HEADER;
    wl.dropped_ts = (uint64_t)get_u32(ts) << 32 | get_u32(ts + 4);
    free(f);
  }
}

/* Queues a container frame: to the host when one is authenticated, else kept for later. */
static void send_container(struct frame *f) {
  f->kind = FK_CONTAINER;
  if (sess.connected && sess.authed) {
    sess.container_bytes += f->len;
    fq_push(&sess.out, f);
  } else {
    fq_push(&wl.pending, f);
    trim_pending();
  }
}

/* After AUTH_OK: the kept container frames go out, in order, after a note of what was lost. */
static void flush_pending(void) {
  if (wl.dropped_bytes) {
    char note[128];
    int n = snprintf(note, sizeof note, "nqvm: %zu bytes of logs dropped while the host was away",
                     wl.dropped_bytes);
    struct frame *f = log_frame(wl.dropped_ts, LOG_NQVM, note, (size_t)n);
    f->kind = FK_CONTAINER;
    sess.container_bytes += f->len;
    fq_push(&sess.out, f);
    wl.dropped_bytes = 0;
  }
  struct frame *f;
  while ((f = fq_pop(&wl.pending))) {
    sess.container_bytes += f->len;
    fq_push(&sess.out, f);
  }
}

static void console_write(const void *data, size_t len) {
  if (opt.mode != MODE_CONTAINER) return;
  if (console.len - console.off + len > CONSOLE_LIMIT) return; /* best effort: the host has the logs */
  buf_put(&console, data, len);
}

static void console_flush(void) {
  while (console.off < console.len) {
    ssize_t n = write(STDOUT_FILENO, console.p + console.off, console.len - console.off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n < 0 && errno != EAGAIN) console.off = console.len; /* stdout is gone */
      break;
    }
    console.off += (size_t)n;
  }
  buf_compact(&console);
}

/* A stream-3 LOG record: a message of the agent itself, also logged to stderr. */
static void container_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void container_note(const char *fmt, ...) {
  char msg[600];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
  logmsg("%s", msg);
  send_container(log_frame(wall_ms(), LOG_NQVM, msg, (size_t)n));
}

/* ---- channels ---- */

static struct channel *channel_by_id(uint32_t id) {
  for (int i = 0; i < MAX_CHANNELS; i++)
    if (channels[i].used && channels[i].id == id) return &channels[i];
  return NULL;
}

static struct channel *channel_by_serial(uint64_t serial) {
  for (int i = 0; i < MAX_CHANNELS; i++)
    if (channels[i].used && channels[i].serial == serial) return &channels[i];
  return NULL;
}

static void add_orphan(pid_t pid) {
  if (orphans.n == orphans.cap) {
    orphans.cap = orphans.cap * 2 + 8;
    orphans.v = xrealloc(orphans.v, orphans.cap * sizeof *orphans.v);
  }
  orphans.v[orphans.n++] = pid;
}

static void channel_free(struct channel *c) {
  close_fd(&c->in_fd);
  close_fd(&c->out_fd);
  close_fd(&c->err_fd);
  buf_free(&c->in);
  c->used = false;
}

/* Session end: the channel's process group is killed and the channel forgotten. */
static void channel_kill(struct channel *c) {
  kill(-c->pid, SIGKILL);
  if (!c->reaped) add_orphan(c->pid);
  channel_free(c);
}

static void channel_close_stdin(struct channel *c) {
  close_fd(&c->in_fd);
  buf_free(&c->in);
}

static void channel_write_stdin(struct channel *c) {
  while (c->in_fd >= 0 && c->in.off < c->in.len) {
    ssize_t n = write(c->in_fd, c->in.p + c->in.off, c->in.len - c->in.off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0) { /* EPIPE: the child no longer reads its stdin */
      channel_close_stdin(c);
      return;
    }
    c->in.off += (size_t)n;
  }
  buf_compact(&c->in);
  if (c->in_eof && c->in.len == 0 && !c->tty) channel_close_stdin(c);
}

static void channel_read(struct channel *c, bool is_err) {
  int *fd = is_err ? &c->err_fd : &c->out_fd;
  ssize_t n = read(*fd, iobuf, sizeof iobuf);
  if (n > 0) {
    send_channel(c, is_err ? T_STDERR : T_STDOUT, iobuf, (size_t)n);
    return;
  }
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  close_fd(fd); /* EOF, or EIO from a pty master once the last slave fd is closed */
}

/* EXIT goes out once the child is reaped and its output has reached EOF (or the drain gave up). */
static void channel_maybe_finish(struct channel *c) {
  if (!c->reaped || c->out_fd >= 0 || c->err_fd >= 0) return;
  uint8_t p[5];
  if (WIFSIGNALED(c->status)) {
    p[0] = EXIT_SIGNAL;
    put_u32(p + 1, (uint32_t)WTERMSIG(c->status));
  } else {
    p[0] = EXIT_EXITED;
    put_u32(p + 1, (uint32_t)WEXITSTATUS(c->status));
  }
  send_channel(c, T_EXIT, p, sizeof p);
  channel_free(c);
}

static int channel_count(void) {
  int n = 0;
  for (int i = 0; i < MAX_CHANNELS; i++) n += channels[i].used;
  return n;
}

/* ---- sessions ---- */

static void end_session(const char *why) {
  if (sess.connected) logmsg("session ended: %s", why);
  for (int i = 0; i < MAX_CHANNELS; i++)
    if (channels[i].used) channel_kill(&channels[i]);
  /* Unsent container frames are kept for the next host, in order, ahead of newer ones. */
  struct fqueue keep = {0};
  struct frame *f;
  while ((f = fq_pop(&sess.out))) {
    if (f->kind == FK_CONTAINER) {
      f->off = 0;
      fq_push(&keep, f);
    } else {
      free(f);
    }
  }
  while ((f = fq_pop(&wl.pending))) fq_push(&keep, f);
  wl.pending = keep;
  trim_pending();
  sess.control_bytes = sess.container_bytes = 0;
  sess.authed = false;
  sess.in_len = 0;
  sess.generation++;
  sess.connected = false;
  if (opt.transport == TR_DEVICE) {
    sess.backoff_until = mono_ms() + DEVICE_BACKOFF_MS;
    while (read(sess.fd, iobuf, sizeof iobuf) > 0) { /* drop what the old host left */
    }
  } else {
    close_fd(&sess.fd);
  }
}

static void begin_session(void) {
  sess.connected = true;
  sess.authed = false;
  sess.in_len = 0;
  sess.generation++;
  send_hello();
}

static void protocol_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void protocol_error(const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  logmsg("protocol error: %s", msg);
  end_session("protocol error");
}

/* Takes written frames off the queue and releases their back-pressure accounting. */
static void frame_done(struct frame *f) {
  if (f->kind == FK_CONTROL) sess.control_bytes -= f->len;
  if (f->kind == FK_CONTAINER) sess.container_bytes -= f->len;
  if (f->kind == FK_CHANNEL) {
    struct channel *c = channel_by_serial(f->serial);
    if (c) c->queued -= f->len;
  }
  free(f);
}

static void session_flush(void) {
  while (sess.connected && sess.out.head) {
    struct iovec iov[64];
    int n = 0;
    for (struct frame *f = sess.out.head; f && n < 64; f = f->next, n++) {
      iov[n].iov_base = f->data + f->off;
      iov[n].iov_len = f->len - f->off;
    }
    ssize_t w = writev(sess.fd, iov, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) return;
    if (w < 0) {
      end_session(strerror(errno));
      return;
    }
    size_t left = (size_t)w;
    while (left && sess.out.head) {
      struct frame *f = sess.out.head;
      size_t rest = f->len - f->off;
      if (left < rest) {
        f->off += left;
        break;
      }
      left -= rest;
      frame_done(fq_pop(&sess.out));
    }
  }
}

/* ---- token ---- */

static bool token_valid(const char *t, size_t len) {
  if (len < TOKEN_MIN || len > TOKEN_MAX) return false;
  for (size_t i = 0; i < len; i++)
    if (t[i] < 0x21 || t[i] > 0x7e) return false;
  return true;
}

/* Constant time in the token's contents: always TOKEN_MAX rounds. */
static bool token_matches(const uint8_t *given, size_t len) {
  size_t mine = strlen(token);
  unsigned diff = (unsigned)(len ^ mine);
  for (size_t i = 0; i < TOKEN_MAX; i++) {
    uint8_t a = i < len ? given[i] : 0, b = i < mine ? (uint8_t)token[i] : 0;
    diff |= (unsigned)(a ^ b);
  }
  return diff == 0 && len <= TOKEN_MAX;
}

static void load_token(const char *path) {
  char *data = read_file(path, NULL);
  if (!data) die(2, "cannot read token file %s: %s", path, strerror(errno));
  data[strcspn(data, "\n")] = 0;
  trim(data);
  if (!token_valid(data, strlen(data)))
    die(2, "token in %s must be %d..%d printable ASCII characters", path, TOKEN_MIN, TOKEN_MAX);
  snprintf(token, sizeof token, "%s", data);
  snprintf(token_path, sizeof token_path, "%s", path);
  free(data);
}

/* A clone keeps its new token across agent restarts; a read-only token file is fine too. */
static void save_token(void) {
  if (!*token_path) return;
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof tmp, "%s.new", token_path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  bool ok = write(fd, token, strlen(token)) == (ssize_t)strlen(token) && write(fd, "\n", 1) == 1;
  ok = fsync(fd) == 0 && ok;
  close(fd);
  if (!ok || rename(tmp, token_path) < 0) unlink(tmp);
}

/* ---- host frames ---- */

struct tlv {
  uint8_t tag;
  const uint8_t *value;
  uint32_t len;
};

/* Iterates TLVs: returns 1 with *t filled, 0 at the end, -1 if truncated. */
static int tlv_next(const uint8_t *p, size_t len, size_t *off, struct tlv *t) {
  if (*off == len) return 0;
  if (len - *off < 5) return -1;
  t->tag = p[*off];
  t->len = get_u32(p + *off + 1);
  if (len - *off - 5 < t->len) return -1;
  t->value = p + *off + 5;
  *off += 5 + t->len;
  return 1;
}

static bool has_nul(const uint8_t *p, size_t n) { return memchr(p, 0, n) != NULL; }

struct exec_request {
  struct strv argv, env;
  char *cwd, *user;
  bool tty, want_stdin;
  uint16_t rows, cols;
};

static void exec_request_free(struct exec_request *r) {
  strv_free(&r->argv);
  strv_free(&r->env);
  free(r->cwd);
  free(r->user);
}

static bool parse_exec(const uint8_t *p, size_t len, struct exec_request *r, const char **why) {
  size_t off = 0;
  struct tlv t;
  int rc;
  while ((rc = tlv_next(p, len, &off, &t)) == 1) {
    if (t.tag <= EXEC_USER && has_nul(t.value, t.len)) {
      *why = "a string holds a NUL byte";
      return false;
    }
    switch (t.tag) {
    case EXEC_ARG: strv_push(&r->argv, (const char *)t.value, t.len); break;
    case EXEC_ENV:
      if (!memchr(t.value, '=', t.len) || t.value[0] == '=') {
        *why = "env entries are K=V";
        return false;
      }
      strv_push(&r->env, (const char *)t.value, t.len);
      break;
    case EXEC_CWD: free(r->cwd), r->cwd = xstrndup((const char *)t.value, t.len); break;
    case EXEC_USER: free(r->user), r->user = xstrndup((const char *)t.value, t.len); break;
    case EXEC_TTY:
      if (t.len != 4) {
        *why = "tty is u16 rows, u16 cols";
        return false;
      }
      r->tty = true;
      r->rows = get_u16(t.value);
      r->cols = get_u16(t.value + 2);
      break;
    case EXEC_STDIN: r->want_stdin = true; break;
    default: break; /* unknown tags are skipped: newer hosts may send more */
    }
  }
  if (rc < 0) {
    *why = "truncated TLV";
    return false;
  }
  if (r->argv.n == 0 || !*r->argv.v[0]) {
    *why = "argv is empty";
    return false;
  }
  return true;
}

static void exec_failed(uint32_t ch, int value, const char *msg) {
  send_error(ch, "EXEC_FAILED", "%s", msg);
  uint8_t p[5] = {EXIT_UNSTARTABLE};
  put_u32(p + 1, (uint32_t)value);
  send_raw(T_EXIT, ch, p, sizeof p);
}

static void handle_exec(uint32_t ch, const uint8_t *p, size_t len) {
  if (ch == 0) {
    send_error(ch, "BAD_REQUEST", "exec needs a non-zero channel");
    return;
  }
  if (channel_by_id(ch)) {
    send_error(ch, "BAD_REQUEST", "channel %u is in use", ch);
    return;
  }
  if (channel_count() >= MAX_CHANNELS) {
    send_error(ch, "BUSY", "at most %d concurrent execs", MAX_CHANNELS);
    return;
  }
  struct exec_request r = {0};
  const char *why = NULL;
  if (!parse_exec(p, len, &r, &why)) {
    send_error(ch, "BAD_REQUEST", "exec: %s", why);
    exec_request_free(&r);
    return;
  }
  /* Defaults: the container's environment, cwd and user in container mode, else root in /. */
  struct strv env = {0};
  const char *cwd = r.cwd;
  const char *user_spec = r.user;
  bool container_user = false;
  if (opt.mode == MODE_CONTAINER) {
    strv_copy(&env, &wl.env);
    if (!cwd) cwd = wl.cwd;
    if (!user_spec && wl.user) user_spec = wl.user, container_user = true;
  }
  env_set(&env, "PATH=" DEFAULT_PATH, true);
  struct ident id;
  char msg[512];
  if (user_spec && !resolve_user(user_spec, &id, msg, sizeof msg)) {
    exec_failed(ch, 127, msg);
    strv_free(&env);
    exec_request_free(&r);
    return;
  }
  if (user_spec) env_for_user(&env, &id, container_user);
  if (r.tty) env_set(&env, "TERM=xterm", true);
  for (size_t i = 0; i < r.env.n; i++) env_set(&env, r.env.v[i], false);

  struct spawn_spec spec = {
      .argv = r.argv.v,
      .envp = env.v,
      .cwd = cwd,
      .user = user_spec ? &id : NULL,
      .tty = r.tty,
      .rows = r.rows,
      .cols = r.cols,
      .want_stdin = r.want_stdin,
  };
  struct spawned sp;
  int value = spawn_process(&spec, &sp, msg, sizeof msg);
  if (value) {
    if (sp.pid > 0) add_orphan(sp.pid);
    exec_failed(ch, value, msg);
  } else {
    struct channel *c = NULL;
    for (int i = 0; i < MAX_CHANNELS && !c; i++)
      if (!channels[i].used) c = &channels[i];
    if (!c) die(1, "no free channel slot"); /* channel_count() said there was one */
    memset(c, 0, sizeof *c);
    c->used = true;
    c->serial = next_serial++;
    c->id = ch;
    c->pid = sp.pid;
    c->tty = r.tty;
    c->in_fd = sp.in_fd;
    c->out_fd = sp.out_fd;
    c->err_fd = sp.err_fd;
    uint8_t pid[4];
    put_u32(pid, (uint32_t)sp.pid);
    send_channel(c, T_STARTED, pid, sizeof pid);
  }
  strv_free(&env);
  exec_request_free(&r);
}

static void handle_stop(const uint8_t *p, size_t len) {
  if (len != 8) {
    send_error(0, "BAD_REQUEST", "stop is u32 signal, u32 timeout seconds");
    return;
  }
  if (wl.state != WL_RUNNING) return;
  uint32_t sig = get_u32(p), timeout_s = get_u32(p + 4);
  logmsg("stopping the workload: signal %u, SIGKILL after %u s", sig, timeout_s);
  if (sig) kill(-wl.pid, (int)sig);
  wl.kill_at = mono_ms() + (int64_t)timeout_s * 1000;
  if (!wl.kill_at) wl.kill_at = 1;
}

static void finish_container(void) __attribute__((noreturn));

static void handle_frame(uint8_t type, uint32_t ch, const uint8_t *p, size_t len) {
  switch (type) {
  case T_AUTH: case T_SET_TOKEN: case T_PING: case T_EXEC: case T_STDIN: case T_STDIN_EOF:
  case T_SIGNAL: case T_RESIZE: case T_EXIT_ACK: case T_STOP:
    break;
  default:
    protocol_error("unknown frame type 0x%02x from the host", type);
    return;
  }
  if (type == T_AUTH) {
    if (token_matches(p, len)) {
      bool first = !sess.authed;
      sess.authed = true;
      send_auth_ok();
      if (first) flush_pending();
    } else {
      sess.authed = false;
      send_error(0, "AUTH_FAILED", "wrong token");
    }
    return;
  }
  if (!sess.authed) {
    send_error(ch, "AUTH_REQUIRED", "authenticate first");
    return;
  }
  struct channel *c = NULL;
  if (type == T_STDIN || type == T_STDIN_EOF || type == T_SIGNAL || type == T_RESIZE) {
    c = channel_by_id(ch);
    if (!c) {
      send_error(ch, "NO_SUCH_CHANNEL", "no channel %u", ch);
      return;
    }
  }
  switch (type) {
  case T_SET_TOKEN:
    if (!token_valid((const char *)p, len)) {
      send_error(0, "BAD_REQUEST", "a token is %d..%d printable ASCII characters", TOKEN_MIN, TOKEN_MAX);
      return;
    }
    memcpy(token, p, len);
    token[len] = 0;
    save_token();
    send_auth_ok();
    break;
  case T_PING: send_raw(T_PONG, ch, p, len); break;
  case T_EXEC: handle_exec(ch, p, len); break;
  case T_STDIN:
    if (c->in_fd < 0 || c->in_eof) break; /* no stdin, or already closed: dropped */
    if (c->in.len - c->in.off + len > STDIN_BACKLOG_LIMIT) {
      send_error(ch, "BAD_REQUEST", "more than %d bytes of stdin unread; stdin closed", STDIN_BACKLOG_LIMIT);
      channel_close_stdin(c);
      break;
    }
    buf_put(&c->in, p, len);
    channel_write_stdin(c);
    break;
  case T_STDIN_EOF:
    c->in_eof = true;
    channel_write_stdin(c);
    break;
  case T_SIGNAL:
    if (len != 4) {
      send_error(ch, "BAD_REQUEST", "signal is a u32");
      break;
    }
    kill(-c->pid, (int)get_u32(p));
    break;
  case T_RESIZE:
    if (len != 4 || !c->tty || c->out_fd < 0) {
      send_error(ch, "BAD_REQUEST", "resize is u16 rows, u16 cols, for a tty");
      break;
    }
    struct winsize ws = {.ws_row = get_u16(p), .ws_col = get_u16(p + 2)};
    ioctl(c->out_fd, TIOCSWINSZ, &ws);
    break;
  case T_EXIT_ACK:
    if (opt.mode != MODE_CONTAINER) {
      send_error(0, "BAD_REQUEST", "not in container mode");
    } else if (wl.state == WL_WAIT_ACK) {
      logmsg("the host acknowledged the workload's exit");
      finish_container();
    }
    break;
  case T_STOP:
    if (opt.mode != MODE_CONTAINER)
      send_error(0, "BAD_REQUEST", "not in container mode");
    else
      handle_stop(p, len);
    break;
  }
}

static void session_read(void) {
  if (sess.in_len == sizeof sess.in) return;
  ssize_t n = read(sess.fd, sess.in + sess.in_len, sizeof sess.in - sess.in_len);
  if (n == 0) {
    end_session("the host went away");
    return;
  }
  if (n < 0) {
    if (errno != EAGAIN && errno != EINTR) end_session(strerror(errno));
    return;
  }
  sess.in_len += (size_t)n;
  uint64_t gen = sess.generation;
  size_t off = 0;
  while (sess.in_len - off >= 4) {
    uint32_t flen = get_u32(sess.in + off);
    if (flen < 5 || flen > 5 + MAX_PAYLOAD) {
      protocol_error("frame of %u bytes", flen);
      return;
    }
    if (sess.in_len - off < 4 + (size_t)flen) break;
    const uint8_t *f = sess.in + off;
    handle_frame(f[4], get_u32(f + 5), f + FRAME_HEADER, flen - 5);
    if (sess.generation != gen) return;
    off += 4 + flen;
  }
  memmove(sess.in, sess.in + off, sess.in_len - off);
  sess.in_len -= off;
}

/* ---- transports ---- */

static void unix_cleanup(void) {
  if (opt.transport == TR_UNIX && sess.listen_fd >= 0) unlink(opt.unix_path);
}

/* Bound under a temporary name and renamed once listening: whoever sees PATH can connect. */
static void listen_unix(void) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  int n = snprintf(sa.sun_path, sizeof sa.sun_path, "%s.%d.tmp", opt.unix_path, (int)getpid());
  if (n < 0 || (size_t)n >= sizeof sa.sun_path) die(2, "socket path too long: %s", opt.unix_path);
  struct stat st;
  if (lstat(opt.unix_path, &st) == 0 && !S_ISSOCK(st.st_mode))
    die(1, "%s exists and is not a socket", opt.unix_path);
  unlink(sa.sun_path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) die(1, "socket: %s", strerror(errno));
  mode_t old = umask(0177);
  int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (rc < 0) die(1, "bind %s: %s", sa.sun_path, strerror(errno));
  chmod(sa.sun_path, 0600);
  if (listen(fd, 4) < 0) die(1, "listen: %s", strerror(errno));
  if (rename(sa.sun_path, opt.unix_path) < 0) {
    unlink(sa.sun_path);
    die(1, "rename to %s: %s", opt.unix_path, strerror(errno));
  }
  sess.listen_fd = fd;
  logmsg("listening on unix socket %s", opt.unix_path);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static void listen_vsock(void) {
  int fd = -1;
  /* The vsock transport module may still be loading. */
  for (int64_t until = mono_ms() + WAIT_OPEN_MS;;) {
    fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd >= 0 || mono_ms() >= until) break;
    sleep_ms(100);
  }
  if (fd < 0) die(1, "vsock socket: %s", strerror(errno));
  struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                           .svm_port = (unsigned)opt.vsock_port};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die(1, "vsock bind: %s", strerror(errno));
  if (listen(fd, 4) < 0) die(1, "vsock listen: %s", strerror(errno));
  sess.listen_fd = fd;
  logmsg("listening on vsock port %lu", opt.vsock_port);
}

/* The virtio-serial port named org.nqvm.agent, as /dev/NAME (created if udev is absent). */
static bool find_virtio_port(char *path, size_t len) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (!d) return false;
  bool found = false;
  struct dirent *e;
  while (!found && (e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char f[PATH_MAX];
    snprintf(f, sizeof f, "/sys/class/virtio-ports/%s/name", e->d_name);
    char *name = read_file(f, NULL);
    if (!name) continue;
    trim(name);
    if (strcmp(name, VIRTIO_PORT_NAME) == 0) {
      snprintf(path, len, "/dev/%s", e->d_name);
      struct stat st;
      snprintf(f, sizeof f, "/sys/class/virtio-ports/%s/dev", e->d_name);
      char *dev = read_file(f, NULL);
      unsigned maj, min;
      if (stat(path, &st) < 0 && dev && sscanf(dev, "%u:%u", &maj, &min) == 2)
        mknod(path, S_IFCHR | 0600, makedev(maj, min));
      free(dev);
      found = true;
    }
    free(name);
  }
  closedir(d);
  return found;
}

static void open_device(void) {
  char path[PATH_MAX];
  bool is_auto = strcmp(opt.device, "auto") == 0;
  int fd = -1;
  for (int64_t until = mono_ms() + WAIT_OPEN_MS;;) {
    if (!is_auto)
      snprintf(path, sizeof path, "%s", opt.device);
    if (is_auto ? find_virtio_port(path, sizeof path) : true)
      fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0 || mono_ms() >= until) break;
    sleep_ms(100);
  }
  if (fd < 0) {
    if (is_auto) die(1, "no virtio-serial port named " VIRTIO_PORT_NAME " after %d s", WAIT_OPEN_MS / 1000);
    die(1, "cannot open %s: %s", opt.device, strerror(errno));
  }
  sess.fd = fd;
  logmsg("serving on %s", path);
}

static void accept_connection(void) {
  int fd = accept4(sess.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return;
  if (sess.fd >= 0) end_session("a new connection replaced it");
  sess.fd = fd;
  begin_session();
}

/* ---- container workload ---- */

static char *config_file(const char *name, size_t *len, bool required) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s", opt.config_dir, name);
  char *data = read_file(path, len);
  if (!data && (required || errno != ENOENT)) die(2, "cannot read %s: %s", path, strerror(errno));
  return data;
}

static char *config_line(const char *name) {
  char *data = config_file(name, NULL, false);
  if (data) {
    data[strcspn(data, "\n")] = 0;
    if (!*data) {
      free(data);
      data = NULL;
    }
  }
  return data;
}

static void load_container_config(void) {
  size_t len;
  char *argv = config_file("argv", &len, true);
  strv_split_nul(&wl.argv, argv, len);
  free(argv);
  if (wl.argv.n == 0 || !*wl.argv.v[0]) die(2, "%s/argv is empty", opt.config_dir);
  char *env = config_file("env", &len, false);
  if (env) {
    struct strv raw = {0};
    strv_split_nul(&raw, env, len);
    for (size_t i = 0; i < raw.n; i++)
      if (strchr(raw.v[i], '=')) env_set(&wl.env, raw.v[i], false);
    strv_free(&raw);
    free(env);
  }
  env_set(&wl.env, "PATH=" DEFAULT_PATH, true);
  wl.cwd = config_line("cwd");
  wl.user = config_line("user");
}

static const char *exit_kind_name(int kind) {
  return kind == EXIT_EXITED ? "exited" : kind == EXIT_SIGNAL ? "signal" : "unstartable";
}

/* Reports the exit and starts waiting for the host's EXIT_ACK. */
static void workload_exited(int kind, int value) {
  wl.state = WL_WAIT_ACK;
  wl.exit_kind = kind;
  wl.exit_value = value;
  struct buf b = {0};
  buf_u8(&b, (uint8_t)kind);
  buf_u32(&b, (uint32_t)value);
  buf_u64(&b, wall_ms());
  send_container(frame_new(T_WORKLOAD_EXIT, 0, b.p, b.len));
  buf_free(&b);
  char line[96];
  int n = snprintf(line, sizeof line, "NQVM-CONTAINER-EXIT kind=%s value=%d\n", exit_kind_name(kind), value);
  buf_put(&console, line, (size_t)n); /* never dropped, unlike the workload's output */
  bool host = sess.connected && sess.authed;
  wl.ack_deadline = mono_ms() + (host ? ACK_WAIT_CONNECTED_MS : ACK_WAIT_AWAY_MS);
  logmsg("workload %s %d; waiting for the host's acknowledgement", exit_kind_name(kind), value);
}

static void start_workload(void) {
  struct ident id;
  char msg[512];
  struct spawn_spec spec = {.argv = wl.argv.v, .envp = NULL, .cwd = wl.cwd, .user = NULL};
  struct strv env = {0};
  strv_copy(&env, &wl.env);
  if (wl.user) {
    if (!resolve_user(wl.user, &id, msg, sizeof msg)) {
      container_note("nqvm: exec failed: %s", msg);
      strv_free(&env);
      workload_exited(EXIT_UNSTARTABLE, 127);
      return;
    }
    env_for_user(&env, &id, true);
    spec.user = &id;
  }
  spec.envp = env.v;
  struct spawned sp;
  int value = spawn_process(&spec, &sp, msg, sizeof msg);
  strv_free(&env);
  if (value) {
    if (sp.pid > 0) add_orphan(sp.pid);
    container_note("nqvm: exec failed: %s", msg);
    workload_exited(EXIT_UNSTARTABLE, value);
    return;
  }
  wl.state = WL_RUNNING;
  wl.pid = sp.pid;
  wl.out_fd = sp.out_fd;
  wl.err_fd = sp.err_fd;
  struct buf b = {0};
  buf_u32(&b, (uint32_t)sp.pid);
  buf_u64(&b, wall_ms());
  send_container(frame_new(T_WORKLOAD_STARTED, 0, b.p, b.len));
  buf_free(&b);
  logmsg("workload started: %s (pid %d)", wl.argv.v[0], (int)sp.pid);
}

static void emit_line(int stream, const char *data, size_t len) {
  send_container(log_frame(wall_ms(), (uint8_t)stream, data, len));
  console_write(data, len);
  console_write("\n", 1);
}

static void flush_line(int stream) {
  struct line_buf *lb = &wl.lines[stream - 1];
  if (lb->len) emit_line(stream, lb->data, lb->len);
  lb->len = 0;
}

static void workload_read(int stream) {
  int *fd = stream == LOG_STDOUT ? &wl.out_fd : &wl.err_fd;
  ssize_t n = read(*fd, iobuf, sizeof iobuf);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    close_fd(fd);
    flush_line(stream);
    return;
  }
  struct line_buf *lb = &wl.lines[stream - 1];
  for (ssize_t i = 0; i < n; i++) {
    char ch = (char)iobuf[i];
    if (ch == '\n') {
      emit_line(stream, lb->data, lb->len);
      lb->len = 0;
      continue;
    }
    lb->data[lb->len++] = ch;
    if (lb->len == LOG_LINE_MAX) flush_line(stream);
  }
}

static void workload_maybe_finish(void) {
  if (wl.state != WL_DRAINING || wl.out_fd >= 0 || wl.err_fd >= 0) return;
  if (WIFSIGNALED(wl.status))
    workload_exited(EXIT_SIGNAL, WTERMSIG(wl.status));
  else
    workload_exited(EXIT_EXITED, WEXITSTATUS(wl.status));
}

static int container_exit_code(void) {
  return wl.exit_kind == EXIT_SIGNAL ? 128 + wl.exit_value : wl.exit_value;
}

static void finish_container(void) {
  for (int i = 0; i < MAX_CHANNELS; i++)
    if (channels[i].used) channel_kill(&channels[i]);
  if (wl.pid > 0) kill(-wl.pid, SIGKILL); /* grandchildren left in its group */
  session_flush();
  int fl = fcntl(STDOUT_FILENO, F_GETFL);
  if (fl >= 0) fcntl(STDOUT_FILENO, F_SETFL, fl & ~O_NONBLOCK);
  console_flush();
  unix_cleanup();
  if (!opt.halt) exit(container_exit_code());
  sync();
  logmsg("%s", opt.halt_cmd == RB_AUTOBOOT ? "rebooting" : "powering off");
  reboot(opt.halt_cmd);
  die(container_exit_code(), "reboot: %s", strerror(errno));
}

/* ---- children and signals ---- */

static void on_child_exit(pid_t pid, int status) {
  if (opt.mode == MODE_CONTAINER && wl.state == WL_RUNNING && pid == wl.pid) {
    wl.reaped = true;
    wl.status = status;
    wl.state = WL_DRAINING;
    wl.drain_deadline = mono_ms() + DRAIN_MS;
    return;
  }
  for (int i = 0; i < MAX_CHANNELS; i++) {
    struct channel *c = &channels[i];
    if (c->used && !c->reaped && c->pid == pid) {
      c->reaped = true;
      c->status = status;
      c->drain_deadline = mono_ms() + DRAIN_MS;
      return;
    }
  }
  for (size_t i = 0; i < orphans.n; i++)
    if (orphans.v[i] == pid) {
      orphans.v[i] = orphans.v[--orphans.n];
      return;
    }
}

static void try_reap(pid_t pid) {
  int status;
  if (waitpid(pid, &status, WNOHANG) == pid) on_child_exit(pid, status);
}

static void reap_children(void) {
  if (is_pid1) { /* PID 1 also inherits every orphan of the guest */
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) on_child_exit(pid, status);
    return;
  }
  if (wl.state == WL_RUNNING) try_reap(wl.pid);
  for (int i = 0; i < MAX_CHANNELS; i++)
    if (channels[i].used && !channels[i].reaped) try_reap(channels[i].pid);
  for (size_t i = orphans.n; i-- > 0;) try_reap(orphans.v[i]);
}

static void on_signal(int sig) {
  int e = errno;
  uint8_t b = (uint8_t)sig;
  ssize_t w = write(sig_pipe[1], &b, 1);
  (void)w;
  errno = e;
}

static void shutdown_serve(int sig) {
  logmsg("signal %d: exiting", sig);
  for (int i = 0; i < MAX_CHANNELS; i++)
    if (channels[i].used) channel_kill(&channels[i]);
  unix_cleanup();
  exit(0);
}

static void handle_signals(void) {
  uint8_t sigs[64];
  ssize_t n;
  while ((n = read(sig_pipe[0], sigs, sizeof sigs)) > 0) {
    for (ssize_t i = 0; i < n; i++) {
      int sig = sigs[i];
      if (sig == SIGCHLD) {
        reap_children();
      } else if (opt.mode == MODE_CONTAINER) {
        if (wl.state == WL_RUNNING) {
          logmsg("forwarding signal %d to the workload", sig);
          kill(-wl.pid, sig);
        }
      } else if (sig != SIGHUP && !is_pid1) { /* PID 1 exiting would panic the kernel */
        shutdown_serve(sig);
      }
    }
  }
}

static void setup_signals(void) {
  if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) die(1, "pipe: %s", strerror(errno));
  struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
  sigemptyset(&sa.sa_mask);
  int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP};
  for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
}

/* ---- the event loop ---- */

enum poll_kind { P_SIGNAL, P_LISTEN, P_SESSION, P_CH_OUT, P_CH_ERR, P_CH_IN, P_WL_OUT, P_WL_ERR, P_CONSOLE };

struct poll_set {
  struct pollfd fds[8 + 3 * MAX_CHANNELS];
  enum poll_kind kind[8 + 3 * MAX_CHANNELS];
  int idx[8 + 3 * MAX_CHANNELS];
  int n;
};

static void ps_add(struct poll_set *ps, int fd, short events, enum poll_kind kind, int idx) {
  ps->fds[ps->n] = (struct pollfd){.fd = fd, .events = events};
  ps->kind[ps->n] = kind;
  ps->idx[ps->n] = idx;
  ps->n++;
}

static int64_t min_deadline(int64_t a, int64_t b) { return a == 0 ? b : b == 0 ? a : a < b ? a : b; }

/* Runs what is due; returns the next deadline (0 = none). */
static int64_t run_timers(int64_t now) {
  int64_t next = 0;
  for (int i = 0; i < MAX_CHANNELS; i++) {
    struct channel *c = &channels[i];
    if (!c->used || !c->reaped) continue;
    if (c->queued >= CHANNEL_OUT_LIMIT && c->drain_deadline < now + DRAIN_MS)
      c->drain_deadline = now + DRAIN_MS; /* time held back by the host does not count */
    if (now >= c->drain_deadline) { /* a grandchild keeps the output open: give up on it */
      close_fd(&c->out_fd);
      close_fd(&c->err_fd);
      channel_maybe_finish(c);
    } else {
      next = min_deadline(next, c->drain_deadline);
    }
  }
  if (wl.state == WL_RUNNING && wl.kill_at) {
    if (now >= wl.kill_at) {
      kill(-wl.pid, SIGKILL);
      wl.kill_at = 0;
    } else {
      next = min_deadline(next, wl.kill_at);
    }
  }
  if (wl.state == WL_DRAINING) {
    if (sess.authed && sess.container_bytes >= LOG_BUFFER_LIMIT && wl.drain_deadline < now + DRAIN_MS)
      wl.drain_deadline = now + DRAIN_MS;
    if (now >= wl.drain_deadline) {
      logmsg("the workload's output is still open %d ms after its exit: giving up on it", DRAIN_MS);
      close_fd(&wl.out_fd);
      close_fd(&wl.err_fd);
      flush_line(LOG_STDOUT);
      flush_line(LOG_STDERR);
      workload_maybe_finish();
    } else {
      next = min_deadline(next, wl.drain_deadline);
    }
  }
  if (wl.state == WL_WAIT_ACK) {
    if (now >= wl.ack_deadline) {
      logmsg("no acknowledgement from the host");
      finish_container();
    }
    next = min_deadline(next, wl.ack_deadline);
  }
  if (opt.transport == TR_DEVICE && !sess.connected && now < sess.backoff_until)
    next = min_deadline(next, sess.backoff_until);
  return next;
}

static void build_poll_set(struct poll_set *ps, int64_t now) {
  ps->n = 0;
  ps_add(ps, sig_pipe[0], POLLIN, P_SIGNAL, 0);
  if (sess.listen_fd >= 0) ps_add(ps, sess.listen_fd, POLLIN, P_LISTEN, 0);
  if (opt.transport == TR_DEVICE) {
    if (sess.connected) {
      short ev = sess.control_bytes < SESSION_OUT_LIMIT ? POLLIN : 0;
      ps_add(ps, sess.fd, ev | (sess.out.head ? POLLOUT : 0), P_SESSION, 0);
    } else if (now >= sess.backoff_until) {
      ps_add(ps, sess.fd, POLLIN | POLLOUT, P_SESSION, 0); /* POLLHUP while no host is there */
    }
  } else if (sess.fd >= 0) {
    short ev = sess.control_bytes < SESSION_OUT_LIMIT ? POLLIN : 0;
    ps_add(ps, sess.fd, ev | (sess.out.head ? POLLOUT : 0), P_SESSION, 0);
  }
  for (int i = 0; i < MAX_CHANNELS; i++) {
    struct channel *c = &channels[i];
    if (!c->used) continue;
    bool room = c->queued < CHANNEL_OUT_LIMIT;
    if (room && c->out_fd >= 0) ps_add(ps, c->out_fd, POLLIN, P_CH_OUT, i);
    if (room && c->err_fd >= 0) ps_add(ps, c->err_fd, POLLIN, P_CH_ERR, i);
    if (c->in_fd >= 0 && c->in.off < c->in.len) ps_add(ps, c->in_fd, POLLOUT, P_CH_IN, i);
  }
  /* While a host is authenticated the workload waits for it; while none is, old lines are dropped. */
  bool room = !(sess.authed && sess.container_bytes >= LOG_BUFFER_LIMIT);
  if (room && wl.out_fd >= 0) ps_add(ps, wl.out_fd, POLLIN, P_WL_OUT, 0);
  if (room && wl.err_fd >= 0) ps_add(ps, wl.err_fd, POLLIN, P_WL_ERR, 0);
  if (console.off < console.len) ps_add(ps, STDOUT_FILENO, POLLOUT, P_CONSOLE, 0);
}

static void handle_session_event(short rev) {
  if (opt.transport == TR_DEVICE) {
    if (!sess.connected) {
      if (rev & (POLLHUP | POLLERR))
        sess.backoff_until = mono_ms() + DEVICE_BACKOFF_MS;
      else
        begin_session();
      return;
    }
    if (rev & POLLHUP) {
      end_session("the host went away");
      return;
    }
  }
  if (rev & (POLLIN | POLLHUP | POLLERR)) session_read();
  if (sess.connected && (rev & POLLOUT)) session_flush();
}

static void event_loop(void) {
  struct poll_set ps;
  for (;;) {
    session_flush();
    console_flush();
    int64_t now = mono_ms();
    int64_t next = run_timers(now);
    build_poll_set(&ps, now);
    int timeout = next ? (int)(next > now ? next - now : 0) : -1;
    int n = poll(ps.fds, (nfds_t)ps.n, timeout);
    if (n < 0 && errno != EINTR) die(1, "poll: %s", strerror(errno));
    if (n <= 0) continue;
    uint64_t gen = sess.generation;
    for (int i = 0; i < ps.n; i++) {
      short rev = ps.fds[i].revents;
      if (!rev) continue;
      struct channel *c = &channels[ps.idx[i]];
      switch (ps.kind[i]) {
      case P_SIGNAL: handle_signals(); break;
      case P_LISTEN: accept_connection(); break;
      case P_SESSION: handle_session_event(rev); break;
      case P_CH_OUT:
      case P_CH_ERR:
        /* A session reset in this round freed the channel (and maybe reused its slot). */
        if (sess.generation != gen || !c->used) break;
        channel_read(c, ps.kind[i] == P_CH_ERR);
        break;
      case P_CH_IN:
        if (sess.generation == gen && c->used) channel_write_stdin(c);
        break;
      case P_WL_OUT: if (wl.out_fd >= 0) workload_read(LOG_STDOUT); break;
      case P_WL_ERR: if (wl.err_fd >= 0) workload_read(LOG_STDERR); break;
      case P_CONSOLE: console_flush(); break;
      }
    }
    for (int i = 0; i < MAX_CHANNELS; i++)
      if (channels[i].used) channel_maybe_finish(&channels[i]);
    workload_maybe_finish();
  }
}

/* ---- command line ---- */

static void usage(void) __attribute__((noreturn));
static void usage(void) {
  fprintf(stderr,
          "usage: " AGENT " serve|container [--device PATH|auto] [--vsock PORT] [--unix PATH]\n"
          "       [--token-file FILE] [--config DIR] [--no-halt] [--halt poweroff|reboot]\n");
  exit(2);
}

static void parse_args(int argc, char **argv) {
  if (argc < 2) usage();
  if (strcmp(argv[1], "serve") == 0)
    opt.mode = MODE_SERVE;
  else if (strcmp(argv[1], "container") == 0)
    opt.mode = MODE_CONTAINER;
  else
    usage();
  int transports = 0;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--no-halt") == 0) {
      opt.halt = false;
      continue;
    }
    if (i + 1 >= argc) usage();
    const char *v = argv[++i];
    if (strcmp(a, "--device") == 0) {
      opt.transport = TR_DEVICE, opt.device = v, transports++;
    } else if (strcmp(a, "--vsock") == 0) {
      if (!parse_uint(v, UINT32_MAX - 1, &opt.vsock_port)) die(2, "bad vsock port: %s", v);
      opt.transport = TR_VSOCK, transports++;
    } else if (strcmp(a, "--unix") == 0) {
      opt.transport = TR_UNIX, opt.unix_path = v, transports++;
    } else if (strcmp(a, "--token-file") == 0) {
      opt.token_file = v;
    } else if (strcmp(a, "--config") == 0) {
      opt.config_dir = v;
    } else if (strcmp(a, "--halt") == 0) {
      if (strcmp(v, "poweroff") == 0)
        opt.halt_cmd = RB_POWER_OFF;
      else if (strcmp(v, "reboot") == 0)
        opt.halt_cmd = RB_AUTOBOOT;
      else
        die(2, "--halt is poweroff or reboot, not %s", v);
    } else {
      usage();
    }
  }
  if (transports != 1) die(2, "give exactly one of --device, --vsock, --unix");
  if (opt.mode == MODE_CONTAINER && !opt.config_dir) die(2, "container mode needs --config DIR");
}

/*
 * The console must never stall the loop, so stdout becomes non-blocking; a tty or a pipe is
 * first reopened so that the file description shared with the init (tini) stays as it was.
 */
static void console_nonblocking(void) {
  struct stat st;
  if (fstat(STDOUT_FILENO, &st) < 0 || S_ISREG(st.st_mode)) return;
  if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) {
    int fd = open("/proc/self/fd/1", O_WRONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      close(fd);
      return;
    }
  }
  set_nonblock(STDOUT_FILENO);
}

/* fds 0-2 must be open, or a pipe could land on them and be clobbered by dup2 in a child. */
static void ensure_std_fds(void) {
  for (int fd = 0; fd < 3; fd++) {
    if (fcntl(fd, F_GETFD) >= 0) continue;
    int n = open("/dev/null", O_RDWR);
    if (n >= 0 && n != fd) {
      dup2(n, fd);
      close(n);
    }
  }
}

int main(int argc, char **argv) {
  ensure_std_fds();
  parse_args(argc, argv);
  if (opt.token_file) {
    load_token(opt.token_file);
  } else if (opt.config_dir) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/token", opt.config_dir);
    if (access(path, F_OK) == 0) load_token(path);
  }
  if (!*token) die(2, "no token: give --token-file FILE or a token file in --config DIR");
  is_pid1 = getpid() == 1;
  if (is_pid1) reboot(RB_DISABLE_CAD); /* Ctrl-Alt-Del then reaches us as SIGINT */
  setup_signals();
  if (opt.mode == MODE_CONTAINER) {
    load_container_config();
    console_nonblocking();
  }
  switch (opt.transport) {
  case TR_DEVICE: open_device(); break;
  case TR_VSOCK: listen_vsock(); break;
  case TR_UNIX: listen_unix(); break;
  case TR_NONE: usage();
  }
  if (opt.mode == MODE_CONTAINER) start_workload();
  event_loop();
}
