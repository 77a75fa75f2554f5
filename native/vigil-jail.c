/*
 * vigil-jail: runs one VM's QEMU in its own jail (see docs/jail.md). Started by the vigil daemon (root) with a
 * plain argv, never with secrets:
 *
 *   vigil-jail --uid U --gid G --pid-file FILE --root DIR [--cgroup MOUNT:REL]... [--pids-max N]
 *              [--dev PATH]... [--bind-rw PATH]... [--bind-ro PATH]... [--open-ro N:PATH]... [--netns]
 *              [--tap N:/run/netns/NAME:IFNAME]...
 *              [--nofile N] [--nproc N] [--fsize BYTES] --chdir DIR -- /abs/qemu-system-x86_64 ARGS...
 *
 * The process (still root, outside) opens each --tap (setns into the named network namespace, attach to the
 * existing tap IFNAME there, setns back; the descriptor lands at N), joins the per-VM cgroups, unshares pid/ipc/uts (and net with --netns) and
 * forks. The child, pid 1 of the new pid namespace, unshares the mount namespace, builds a tmpfs root holding
 * only what QEMU needs, pivots into it, drops every privilege and execs QEMU with an empty environment. The
 * parent writes the child's host pid to FILE (root-owned 0600: the daemon's pid file, which QEMU cannot touch),
 * waits, removes the cgroups and exits with the child's status (128+signal when killed).
 *
 * Every syscall is checked; any failure before exec prints "vigil-jail: <what>: <errno text>" and exits 125.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_ITEMS 64
#define EXIT_JAIL 125

struct item_list { const char *v[MAX_ITEMS]; int n; };

static struct {
  long uid, gid, pids_max, nofile, nproc;
  long long fsize;
  const char *pid_file, *root, *chdir_to;
  int netns;
  struct item_list cgroups, devs, rw, ro, open_ro, taps;
  char **qemu_argv;
} o = { .uid = -1, .gid = -1, .pids_max = -1, .nofile = 4096, .nproc = -1, .fsize = -1 };

static void die(const char *fmt, ...) {
  int e = errno;
  va_list ap;
  fputs("vigil-jail: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  if (e) fprintf(stderr, ": %s", strerror(e));
  fputc('\n', stderr);
  _exit(EXIT_JAIL);
}

static void usage(const char *why) {
  errno = 0;
  die("bad arguments: %s", why);
}

static long num(const char *s, const char *opt) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || end == s || v < 0 || v > LONG_MAX) usage(opt);
  return (long)v;
}

static void push(struct item_list *l, const char *v, const char *opt) {
  if (l->n >= MAX_ITEMS) usage(opt);
  if (v[0] != '/' && l != &o.cgroups && l != &o.open_ro && l != &o.taps) usage(opt); /* paths must be absolute */
  l->v[l->n++] = v;
}

static void parse(int argc, char **argv) {
  int i;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) { i++; break; }
    if (strcmp(a, "--netns") == 0) { o.netns = 1; continue; }
    if (i + 1 >= argc) usage(a);
    const char *v = argv[++i];
    if (strcmp(a, "--uid") == 0) o.uid = num(v, a);
    else if (strcmp(a, "--gid") == 0) o.gid = num(v, a);
    else if (strcmp(a, "--pids-max") == 0) o.pids_max = num(v, a);
    else if (strcmp(a, "--nofile") == 0) o.nofile = num(v, a);
    else if (strcmp(a, "--nproc") == 0) o.nproc = num(v, a);
    else if (strcmp(a, "--fsize") == 0) o.fsize = num(v, a);
    else if (strcmp(a, "--pid-file") == 0) o.pid_file = v;
    else if (strcmp(a, "--root") == 0) o.root = v;
    else if (strcmp(a, "--chdir") == 0) o.chdir_to = v;
    else if (strcmp(a, "--cgroup") == 0) push(&o.cgroups, v, a);
    else if (strcmp(a, "--dev") == 0) push(&o.devs, v, a);
    else if (strcmp(a, "--bind-rw") == 0) push(&o.rw, v, a);
    else if (strcmp(a, "--bind-ro") == 0) push(&o.ro, v, a);
    else if (strcmp(a, "--open-ro") == 0) push(&o.open_ro, v, a);
    else if (strcmp(a, "--tap") == 0) push(&o.taps, v, a);
    else usage(a);
  }
  /* uid/gid 0 would be no jail at all: refuse it. */
  if (o.uid <= 0 || o.gid <= 0) usage("--uid and --gid (non-zero) are required");
  if (!o.pid_file || !o.root || !o.chdir_to) usage("--pid-file, --root and --chdir are required");
  if (i >= argc || argv[i][0] != '/') usage("an absolute QEMU path after --");
  o.qemu_argv = &argv[i];
}

/* mkdir -p with mode; existing directories are fine. */
static void mkdirs(const char *path, mode_t mode) {
  char buf[PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) { errno = ENAMETOOLONG; die("mkdir %s", path); }
  for (char *p = buf + 1; ; p++) {
    if (*p == '/' || *p == 0) {
      char c = *p;
      *p = 0;
      if (mkdir(buf, mode) < 0 && errno != EEXIST) die("mkdir %s", buf);
      *p = c;
      if (c == 0) break;
    }
  }
}

static void split_cgroup(const char *spec, char *mount, char *dir) {
  const char *colon = strchr(spec, ':');
  if (!colon || spec[0] != '/' || colon[1] == '/' || colon[1] == 0 || strstr(colon, "..")) usage("--cgroup MOUNT:REL");
  snprintf(mount, PATH_MAX, "%.*s", (int)(colon - spec), spec);
  if (snprintf(dir, PATH_MAX, "%s/%s", mount, colon + 1) >= PATH_MAX) usage("--cgroup too long");
}

/* Like write_file, but reports the errno instead of dying: a cgroup directory can vanish under us (below). */
static int try_write(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t n = write(fd, text, strlen(text));
  int e = n == (ssize_t)strlen(text) ? 0 : (n < 0 ? errno : EIO);
  close(fd);
  return e;
}

/* One cgroup: create it, set its limits, join it. 0, or the errno of the step that failed. */
static int setup_cgroup(const char *dir, const char **failed, char *f, size_t fsize) {
  char line[64];
  int e;
  mkdirs(dir, 0755);
  snprintf(f, fsize, "%s/pids.max", dir);
  if (o.pids_max > 0 && access(f, F_OK) == 0) {
    snprintf(line, sizeof line, "%ld", o.pids_max);
    if ((e = try_write(f, line))) return *failed = "pids.max", e;
  }
  snprintf(f, fsize, "%s/devices.deny", dir);
  if (access(f, F_OK) == 0) {
    /* cgroup v1 devices: deny everything, then allow exactly the nodes the jail's /dev gets. */
    if ((e = try_write(f, "a"))) return *failed = "devices.deny", e;
    snprintf(f, fsize, "%s/devices.allow", dir);
    for (int d = 0; d < o.devs.n; d++) {
      struct stat st;
      if (stat(o.devs.v[d], &st) < 0) die("stat %s", o.devs.v[d]);
      if (!S_ISCHR(st.st_mode)) { errno = 0; die("%s is not a character device", o.devs.v[d]); }
      snprintf(line, sizeof line, "c %u:%u rwm", major(st.st_rdev), minor(st.st_rdev));
      if ((e = try_write(f, line))) return *failed = "devices.allow", e;
    }
  }
  snprintf(f, fsize, "%s/cgroup.procs", dir);
  snprintf(line, sizeof line, "%d", getpid());
  if ((e = try_write(f, line))) return *failed = "cgroup.procs", e;
  return 0;
}

/*
 * Creates each per-VM cgroup, sets its limits and moves this process into it (children inherit it).
 * The jail of the VM's previous run removes the same directories when it exits, and a quick restart can start
 * this one before that one is done: its rmdir can land between our mkdir and our writes (ENODEV/ENOENT). Once
 * we are in the group its rmdir fails (EBUSY), so setting the group up again from scratch is enough.
 */
static void join_cgroups(void) {
  char mount[PATH_MAX], dir[PATH_MAX], f[PATH_MAX + 32];
  for (int i = 0; i < o.cgroups.n; i++) {
    split_cgroup(o.cgroups.v[i], mount, dir);
    for (int attempt = 1; ; attempt++) {
      const char *failed = "";
      int e = setup_cgroup(dir, &failed, f, sizeof f);
      if (e == 0) break;
      if ((e != ENODEV && e != ENOENT) || attempt >= 20) { errno = e; die("set up cgroup %s (%s)", dir, failed); }
      usleep(10000);
    }
  }
}

/* After the VM is gone: back to each hierarchy's root, then remove the per-VM directories. */
static void leave_cgroups(void) {
  char mount[PATH_MAX], dir[PATH_MAX], f[PATH_MAX + 32], line[32];
  snprintf(line, sizeof line, "%d", getpid());
  for (int i = 0; i < o.cgroups.n; i++) {
    split_cgroup(o.cgroups.v[i], mount, dir);
    snprintf(f, sizeof f, "%s/cgroup.procs", mount);
    int fd = open(f, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, line, strlen(line)) < 0) fprintf(stderr, "vigil-jail: leave cgroup %s: %s\n", dir, strerror(errno));
    if (fd >= 0) close(fd);
    if (rmdir(dir) < 0) fprintf(stderr, "vigil-jail: rmdir %s: %s\n", dir, strerror(errno));
  }
}

/* Creates an empty file or directory at root+path (parents as root-owned 0755 directories). */
static void make_target(const char *target, int is_dir) {
  char parent[PATH_MAX];
  snprintf(parent, sizeof parent, "%s", target);
  char *slash = strrchr(parent, '/');
  if (slash && slash != parent) { *slash = 0; mkdirs(parent, 0755); }
  if (is_dir) {
    if (mkdir(target, 0755) < 0 && errno != EEXIST) die("mkdir %s", target);
  } else {
    int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) die("create %s", target);
    close(fd);
  }
}

/* Bind-mounts host `path` at the same absolute path in the new root; read-only unless rw. */
static void bind_path(const char *path, int rw, int allow_dev) {
  char target[PATH_MAX];
  struct stat st;
  if (snprintf(target, sizeof target, "%s%s", o.root, path) >= (int)sizeof target) { errno = ENAMETOOLONG; die("bind %s", path); }
  if (lstat(path, &st) < 0) die("stat %s", path);
  if (S_ISLNK(st.st_mode)) {
    /* merged-/usr symlinks (/lib -> usr/lib) are recreated, not followed */
    char link[PATH_MAX];
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) die("readlink %s", path);
    link[n] = 0;
    make_target(target, 1);
    rmdir(target);
    if (symlink(link, target) < 0) die("symlink %s", target);
    return;
  }
  make_target(target, S_ISDIR(st.st_mode));
  if (mount(path, target, NULL, MS_BIND | MS_REC, NULL) < 0) die("bind-mount %s", path);
  unsigned long flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (allow_dev ? 0 : MS_NODEV) | (rw ? 0 : MS_RDONLY);
  if (mount(NULL, target, NULL, flags, NULL) < 0) die("remount %s", path);
}

/* Opens each --open-ro N:PATH read-only (as root, before the drop) at descriptor N for QEMU's -add-fd. */
static void open_fds(void) {
  for (int i = 0; i < o.open_ro.n; i++) {
    const char *colon = strchr(o.open_ro.v[i], ':');
    if (!colon || colon[1] != '/') usage("--open-ro N:PATH");
    char nbuf[16];
    snprintf(nbuf, sizeof nbuf, "%.*s", (int)(colon - o.open_ro.v[i]), o.open_ro.v[i]);
    long n = num(nbuf, "--open-ro");
    if (n < 3 || n > 1000) usage("--open-ro descriptor 3..1000");
    int fd = open(colon + 1, O_RDONLY | O_NOFOLLOW);
    if (fd < 0) die("open %s", colon + 1);
    if (fd != n) {
      if (dup2(fd, (int)n) < 0) die("dup2 %s", colon + 1);
      close(fd);
    }
  }
}

/* The descriptor number of an --open-ro N:PATH or --tap N:... argument (its leading digits). */
static long fd_of(const char *arg) { return strtol(arg, NULL, 10); }

/* One --tap N:NETNS-PATH:IFNAME, checked strictly: N in 3..1000, NETNS-PATH = /run/netns/NAME (one component
 * of letters, digits and ._-, at most 64), IFNAME 1..IFNAMSIZ-1 characters of the same set. */
struct tap_arg { long fd; char netns[96]; char ifname[IFNAMSIZ]; };

static int name_chars(const char *s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')) return 0;
  }
  return !(n == 1 && s[0] == '.') && !(n == 2 && s[0] == '.' && s[1] == '.');
}

static void parse_tap(const char *arg, struct tap_arg *t) {
  static const char prefix[] = "/run/netns/";
  const char *c1 = strchr(arg, ':');
  const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
  if (!c1 || !c2 || strchr(c2 + 1, ':')) usage("--tap N:/run/netns/NAME:IFNAME");
  size_t nlen = (size_t)(c1 - arg);
  if (nlen == 0 || nlen > 4) usage("--tap descriptor 3..1000");
  for (size_t i = 0; i < nlen; i++) if (arg[i] < '0' || arg[i] > '9') usage("--tap descriptor 3..1000");
  t->fd = fd_of(arg);
  if (t->fd < 3 || t->fd > 1000) usage("--tap descriptor 3..1000");
  size_t plen = (size_t)(c2 - (c1 + 1));
  if (plen <= sizeof prefix - 1 || strncmp(c1 + 1, prefix, sizeof prefix - 1) != 0) usage("--tap namespace path must be /run/netns/NAME");
  const char *ns = c1 + 1 + sizeof prefix - 1;
  size_t nslen = plen - (sizeof prefix - 1);
  if (nslen > 64 || !name_chars(ns, nslen)) usage("--tap namespace NAME: 1-64 letters, digits and ._- (one path component)");
  memcpy(t->netns, c1 + 1, plen);
  t->netns[plen] = 0;
  size_t ilen = strlen(c2 + 1);
  if (ilen >= IFNAMSIZ || !name_chars(c2 + 1, ilen)) usage("--tap IFNAME: 1-15 letters, digits and ._-");
  memcpy(t->ifname, c2 + 1, ilen + 1);
}

/* A temporary descriptor moved above every number a --tap or --open-ro may ask for (3..1000), close-on-exec. */
static int high_fd(int fd, const char *what) {
  if (fd < 0) die("open %s", what);
  int h = fcntl(fd, F_DUPFD_CLOEXEC, 1024);
  if (h < 0) die("move descriptor of %s", what);
  close(fd);
  return h;
}

/*
 * Opens each --tap while still root, in the host's namespaces (before any unshare): enter the named network
 * namespace, attach to the tap that already exists there (the daemon created it persistent and bridged; we never
 * create one), come back, and leave the descriptor at N (inherited by QEMU, no close-on-exec).
 */
static void open_taps(void) {
  struct tap_arg t[MAX_ITEMS];
  for (int i = 0; i < o.taps.n; i++) {
    parse_tap(o.taps.v[i], &t[i]);
    for (int j = 0; j < i; j++) if (t[j].fd == t[i].fd) usage("--tap descriptors must differ");
    for (int j = 0; j < o.open_ro.n; j++) if (fd_of(o.open_ro.v[j]) == t[i].fd) usage("--tap descriptor already used by --open-ro");
    if (fcntl((int)t[i].fd, F_GETFD) >= 0) { errno = EBUSY; die("--tap descriptor %ld is already open", t[i].fd); }
  }
  if (o.taps.n == 0) return;
  int home = high_fd(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC), "/proc/self/ns/net");
  for (int i = 0; i < o.taps.n; i++) {
    int nsfd = open(t[i].netns, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (nsfd < 0) die("open network namespace %s", t[i].netns);
    int ns = high_fd(nsfd, t[i].netns);
    if (setns(ns, CLONE_NEWNET) < 0) die("enter network namespace %s", t[i].netns);
    int tun = -1, err = 0;
    const char *step = "";
    if (if_nametoindex(t[i].ifname) == 0) { err = errno ? errno : ENODEV; step = "find tap"; }
    else if ((tun = open("/dev/net/tun", O_RDWR | O_CLOEXEC)) < 0) { err = errno; step = "open /dev/net/tun for"; }
    else {
      tun = high_fd(tun, "/dev/net/tun");
      struct ifreq ifr;
      memset(&ifr, 0, sizeof ifr);
      memcpy(ifr.ifr_name, t[i].ifname, strlen(t[i].ifname));
      ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
      if (ioctl(tun, TUNSETIFF, &ifr) < 0) { err = errno; step = "attach to tap (TUNSETIFF)"; }
    }
    /* Back home before anything else, also on failure (the messages and the rest of the jail are in the host's). */
    if (setns(home, CLONE_NEWNET) < 0) die("return to the host network namespace");
    if (err) { errno = err; die("%s %s in %s", step, t[i].ifname, t[i].netns); }
    close(ns);
    if (dup2(tun, (int)t[i].fd) < 0) die("dup2 tap %s", t[i].ifname);
    close(tun);
  }
  close(home);
}

/* Whether descriptor n is one QEMU gets (--open-ro or --tap). */
static int passed_fd(int n) {
  for (int i = 0; i < o.open_ro.n; i++) if (fd_of(o.open_ro.v[i]) == n) return 1;
  for (int i = 0; i < o.taps.n; i++) if (fd_of(o.taps.v[i]) == n) return 1;
  return 0;
}

static void set_limit(int res, rlim_t v, const char *name) {
  struct rlimit r = { v, v };
  if (setrlimit(res, &r) < 0) die("setrlimit %s", name);
}

static void child(void) {
  /* Host paths, opened before the mounts hide them. */
  open_fds();
  /* Own mount namespace (the parent stays in the host's, where it writes the pid file). */
  if (unshare(CLONE_NEWNS) < 0) die("unshare(CLONE_NEWNS)");
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die("make mounts private");
  if (mount("vigil-jail", o.root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m") < 0) die("mount tmpfs on %s", o.root);

  static const char *system_paths[] = { "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache" };
  for (size_t i = 0; i < sizeof system_paths / sizeof *system_paths; i++) {
    struct stat st;
    if (lstat(system_paths[i], &st) == 0) bind_path(system_paths[i], 0, 0);
  }
  for (int i = 0; i < o.ro.n; i++) bind_path(o.ro.v[i], 0, 0);
  for (int i = 0; i < o.rw.n; i++) bind_path(o.rw.v[i], 1, 0);

  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/dev", o.root);
  if (mkdir(path, 0755) < 0 && errno != EEXIST) die("mkdir %s", path);
  if (mount("vigil-dev", path, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k") < 0) die("mount /dev");
  for (int i = 0; i < o.devs.n; i++) bind_path(o.devs.v[i], 1, 1);
  snprintf(path, sizeof path, "%s/proc", o.root);
  if (mkdir(path, 0555) < 0 && errno != EEXIST) die("mkdir %s", path);
  /* A fresh /proc of the new pid namespace: QEMU sees only itself. */
  if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) die("mount /proc");

  if (chdir(o.root) < 0) die("chdir %s", o.root);
  if (syscall(SYS_pivot_root, ".", ".") < 0) die("pivot_root");
  if (umount2(".", MNT_DETACH) < 0) die("detach the old root");
  if (chdir("/") < 0) die("chdir /");
  if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0) die("remount / read-only");

  set_limit(RLIMIT_CORE, 0, "RLIMIT_CORE");
  set_limit(RLIMIT_NOFILE, (rlim_t)o.nofile, "RLIMIT_NOFILE");
  if (o.nproc > 0) set_limit(RLIMIT_NPROC, (rlim_t)o.nproc, "RLIMIT_NPROC");
  if (o.fsize > 0) set_limit(RLIMIT_FSIZE, (rlim_t)o.fsize, "RLIMIT_FSIZE");

  /* The bounding set goes while we still hold CAP_SETPCAP; setresuid then clears the rest. */
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) die("drop capability %d", cap);
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0) die("clear ambient capabilities");
  if (setgroups(0, NULL) < 0) die("setgroups");
  if (setresgid((gid_t)o.gid, (gid_t)o.gid, (gid_t)o.gid) < 0) die("setresgid %ld", o.gid);
  if (setresuid((uid_t)o.uid, (uid_t)o.uid, (uid_t)o.uid) < 0) die("setresuid %ld", o.uid);
  struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof d);
  if (syscall(SYS_capset, &h, d) < 0) die("capset (clear)");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("PR_SET_NO_NEW_PRIVS");
  /* Only 0-2 and the descriptors opened for QEMU (--open-ro, --tap) survive. */
  int keep = 2;
  for (int i = 0; i < o.open_ro.n; i++) if ((int)fd_of(o.open_ro.v[i]) > keep) keep = (int)fd_of(o.open_ro.v[i]);
  for (int i = 0; i < o.taps.n; i++) if ((int)fd_of(o.taps.v[i]) > keep) keep = (int)fd_of(o.taps.v[i]);
  for (int fd = 3; fd <= keep; fd++) {
    if (!passed_fd(fd)) close(fd);
  }
  if (syscall(SYS_close_range, keep + 1, ~0U, 0) < 0) die("close_range");
  umask(077);
  if (chdir(o.chdir_to) < 0) die("chdir %s", o.chdir_to);
  char *empty_env[] = { NULL };
  execve(o.qemu_argv[0], o.qemu_argv, empty_env);
  die("execve %s", o.qemu_argv[0]);
}

int main(int argc, char **argv) {
  parse(argc, argv);
  if (geteuid() != 0) { errno = EPERM; die("must run as root"); }
  /* Taps first: once in the per-VM devices cgroup (v1: only the jail's /dev nodes) /dev/net/tun cannot be opened. */
  open_taps();
  join_cgroups();
  int flags = CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | (o.netns ? CLONE_NEWNET : 0);
  if (unshare(flags) < 0) die("unshare(pid, ipc, uts%s)", o.netns ? ", net" : "");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    if (sethostname("vigil-jail", 10) < 0) die("sethostname");
    child();
  }

  /* Parent: root, outside. The pid file is written fresh (never through a link) and only root can read it. */
  char line[32];
  int n = snprintf(line, sizeof line, "%d\n", pid);
  if (unlink(o.pid_file) < 0 && errno != ENOENT) { kill(pid, SIGKILL); die("unlink %s", o.pid_file); }
  int fd = open(o.pid_file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0 || write(fd, line, (size_t)n) != n || close(fd) < 0) { kill(pid, SIGKILL); die("write %s", o.pid_file); }

  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) die("waitpid");
  }
  leave_cgroups();
  /* The pid file stays: the VM's next jail may already have written its own there (a quick restart), and a
   * stale one is harmless — the daemon trusts it only while the process is QEMU with this VM's -uuid. */
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}
