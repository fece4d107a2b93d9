/* The C ABI's test: run against a live PoV device by scripts/bindings-test.
 *
 *   pov_test DEVICE TENANT SECRET_FILE
 *
 * Checks the whole API end to end (files, namespace calls, errors) and attacks it the
 * way a hostile caller would: a wrong secret, NULL and non-UTF-8 arguments, a
 * read-only session writing, a prefix session stepping outside its prefix, threads
 * sharing one file. Exits 0 only if every check passed; prints each failure. */
#include "pov.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                          \
  do {                                                                            \
    if (!(cond)) {                                                                \
      failures++;                                                                 \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);             \
      fprintf(stderr, __VA_ARGS__);                                               \
      fprintf(stderr, " (last error: %s)\n", pov_get_error_msg());                \
    }                                                                             \
  } while (0)

#define BIG (3u << 20) /* 3 MiB: three parallel 1 MiB requests each way */

static unsigned char pattern_byte(size_t i, unsigned seed) {
  return (unsigned char)((i * 2654435761u + seed) >> 7);
}

struct listing {
  int files, dirs, saw_moved;
};

static int count_entry(void *ctx, const struct pov_dirent *e) {
  struct listing *l = ctx;
  if (e->kind == POV_KIND_DIR) l->dirs++;
  else l->files++;
  if (strcmp(e->name, "moved") == 0) l->saw_moved = 1;
  return 0;
}

static int stop_at_first(void *ctx, const struct pov_dirent *e) {
  (void)e;
  (*(int *)ctx)++;
  return 42;
}

struct writer {
  pov_file *f;
  unsigned index;
  int rc;
};

/* Each thread writes its own 256 KiB region of one shared file. */
static void *write_region(void *arg) {
  struct writer *w = arg;
  size_t len = 256u << 10;
  unsigned char *buf = malloc(len);
  for (size_t i = 0; i < len; i++) buf[i] = (unsigned char)(w->index * 31 + i % 251);
  int64_t n = pov_file_pwrite(w->f, buf, len, (uint64_t)w->index * len);
  w->rc = n == (int64_t)len ? 0 : (int)n;
  free(buf);
  return NULL;
}

static int read_secret(const char *path, unsigned char *buf, size_t cap, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  *len = fread(buf, 1, cap, f);
  fclose(f);
  while (*len > 0 && (buf[*len - 1] == '\n' || buf[*len - 1] == '\r')) (*len)--;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s DEVICE TENANT SECRET_FILE\n", argv[0]);
    return 2;
  }
  unsigned char secret[256];
  size_t secret_len;
  if (read_secret(argv[3], secret, sizeof secret, &secret_len) != 0) {
    perror(argv[3]);
    return 2;
  }
  printf("libpov %s\n", pov_version());

  pov_device *dev = NULL;
  CHECK(pov_device_open("/nonexistent/pov0", &dev) < 0 && dev == NULL, "opening a missing device fails");
  CHECK(strlen(pov_get_error_msg()) > 0, "a failure leaves a message");
  CHECK(pov_device_open(NULL, &dev) == -EINVAL, "NULL spec");
  int rc = pov_device_open(argv[1], &dev);
  if (rc != 0) {
    fprintf(stderr, "cannot open %s: %s (%d)\n", argv[1], pov_get_error_msg(), rc);
    return 1;
  }

  /* A wrong secret: refused, nothing opened. */
  pov_session *bad = NULL;
  rc = pov_session_open(dev, argv[2], (const unsigned char *)"wrong", 5, NULL, &bad);
  CHECK(rc == -EPERM && bad == NULL, "wrong secret gave %d", rc);

  pov_session *s = NULL;
  struct pov_session_options opts = {.queues = 4};
  rc = pov_session_open(dev, argv[2], secret, secret_len, &opts, &s);
  if (rc != 0) {
    fprintf(stderr, "cannot open a session: %s (%d)\n", pov_get_error_msg(), rc);
    return 1;
  }
  pov_remove(s, "/c-test/d/moved");
  pov_remove(s, "/c-test/d/data");
  pov_remove(s, "/c-test/d");
  CHECK(pov_mkdir(s, "/c-test/d", 0, 1) == 0, "mkdir -p");
  CHECK(pov_mkdir(s, "/c-test/d", 0, 1) == 0, "mkdir -p of an existing directory");
  CHECK(pov_mkdir(s, "/c-test/d", 0750, 0) == -EEXIST, "mkdir of an existing directory");

  /* Files: exclusive create, 3 MiB written and read back, append, stat. */
  pov_file *f = NULL;
  rc = pov_open(s, "/c-test/d/data", POV_O_WRITE | POV_O_CREATE | POV_O_EXCL, &f);
  CHECK(rc == 0, "exclusive create gave %d", rc);
  if (rc != 0) return 1;
  pov_file *again = NULL;
  rc = pov_open(s, "/c-test/d/data", POV_O_WRITE | POV_O_CREATE | POV_O_EXCL, &again);
  CHECK(rc == -EEXIST && again == NULL, "second exclusive create gave %d", rc);
  CHECK(pov_open(s, "/c-test/d/data", POV_O_CREATE, &again) == -EINVAL, "create without write");
  CHECK(pov_open(s, "/c-test/d/data", 0x100, &again) == -EINVAL, "unknown open flags");
  unsigned char *out = malloc(BIG), *in = malloc(BIG);
  for (size_t i = 0; i < BIG; i++) out[i] = pattern_byte(i, 7);
  CHECK(pov_file_pwrite(f, out, BIG, 0) == BIG, "pwrite 3 MiB");
  memset(in, 0, BIG);
  CHECK(pov_file_pread(f, in, BIG, 0) == BIG, "pread 3 MiB");
  CHECK(memcmp(in, out, BIG) == 0, "3 MiB read back differ");
  CHECK(pov_file_pread(f, in, 100, BIG - 10) == 10, "a read across the end is short");
  CHECK(pov_file_pread(f, in, 100, BIG + 10) == 0, "a read past the end is 0");
  uint64_t at = 0;
  CHECK(pov_file_append(f, "tail", 4, &at) == 0 && at == BIG, "append landed at %llu", (unsigned long long)at);
  CHECK(pov_file_sync(f) == 0, "fsync");
  struct pov_stat st;
  CHECK(pov_file_stat(f, &st) == 0 && st.size == BIG + 4 && st.kind == POV_KIND_FILE, "file stat size %llu",
        (unsigned long long)st.size);
  CHECK(pov_file_truncate(f, 1000) == 0, "truncate");
  CHECK(pov_stat(s, "/c-test/d/data", &st) == 0 && st.size == 1000, "size after truncate %llu",
        (unsigned long long)st.size);
  CHECK(pov_file_pread(f, NULL, 10, 0) == -EINVAL, "NULL buffer");

  /* Threads sharing the file: 8 writers, distinct regions, then every byte checked. */
  pthread_t th[8];
  struct writer w[8];
  for (unsigned i = 0; i < 8; i++) {
    w[i] = (struct writer){.f = f, .index = i};
    pthread_create(&th[i], NULL, write_region, &w[i]);
  }
  for (unsigned i = 0; i < 8; i++) {
    pthread_join(th[i], NULL);
    CHECK(w[i].rc == 0, "writer %u gave %d", i, w[i].rc);
  }
  CHECK(pov_file_pread(f, in, 8u * (256u << 10), 0) == 8 * (256 << 10), "read the threads' regions");
  int region_ok = 1;
  for (size_t i = 0; i < 8u * (256u << 10); i++) {
    size_t r = i / (256u << 10), j = i % (256u << 10);
    if (in[i] != (unsigned char)(r * 31 + j % 251)) {
      region_ok = 0;
      break;
    }
  }
  CHECK(region_ok, "a thread's region was not what it wrote");
  CHECK(pov_file_close(f) == 0, "close");

  /* Namespace: rename (no-replace refused onto a file), attributes, list, statfs. */
  pov_file *g = NULL;
  CHECK(pov_open(s, "/c-test/d/moved", POV_O_WRITE | POV_O_CREATE | POV_O_TRUNC, &g) == 0, "create");
  pov_file_close(g);
  CHECK(pov_rename(s, "/c-test/d/data", "/c-test/d/moved", POV_RENAME_NOREPLACE) == -EEXIST, "rename noreplace");
  CHECK(pov_rename(s, "/c-test/d/data", "/c-test/d/moved", 99) == -EINVAL, "rename with unknown flags");
  CHECK(pov_rename(s, "/c-test/d/data", "/c-test/d/moved", POV_RENAME_SYNC) == 0, "rename");
  CHECK(pov_stat(s, "/c-test/d/data", &st) == -ENOENT, "the old name is gone");
  CHECK(pov_set_attr(s, "/c-test/d/moved", 0640, 1700000000123456789LL) == 0, "set attributes");
  CHECK(pov_stat(s, "/c-test/d/moved", &st) == 0 && st.mode == 0640 && st.mtime_ns / 1000 == 1700000000123456LL,
        "mode %o mtime %llu", st.mode, (unsigned long long)st.mtime_ns);
  CHECK(pov_set_attr(s, "/c-test/d/moved", 04755, -1) == -EINVAL, "set-id bits are refused");
  struct listing l = {0};
  CHECK(pov_list(s, "/c-test/d", count_entry, &l) == 0 && l.files == 1 && l.dirs == 0 && l.saw_moved,
        "list: %d files %d dirs", l.files, l.dirs);
  int calls = 0;
  CHECK(pov_list(s, "/c-test", stop_at_first, &calls) == 42 && calls == 1, "a callback stops the listing");
  CHECK(pov_list(s, "/c-test/d/moved", count_entry, &l) == -ENOTDIR, "list of a file");
  struct pov_statfs fs;
  CHECK(pov_statfs(s, "/", &fs) == 0 && fs.blocks > 0 && fs.block_size > 0, "statfs");
  CHECK(pov_stat(s, "/c-test/\xff", &st) == -EINVAL, "non-UTF-8 path");
  CHECK(pov_stat(s, "/c-test/../../etc/passwd", &st) < 0, "a path climbing out of the namespace");

  /* A read-only session and a prefix session of the same tenant. */
  pov_session *ro = NULL;
  struct pov_session_options ro_opts = {.queues = 1, .flags = POV_SESSION_READ_ONLY};
  CHECK(pov_session_open(dev, argv[2], secret, secret_len, &ro_opts, &ro) == 0, "read-only session");
  if (ro) {
    CHECK(pov_stat(ro, "/c-test/d/moved", &st) == 0, "a read-only session reads");
    pov_file *w2 = NULL;
    rc = pov_open(ro, "/c-test/d/moved", POV_O_WRITE, &w2);
    CHECK(rc < 0 && w2 == NULL, "a read-only session opened for writing: %d", rc);
    CHECK(pov_remove(ro, "/c-test/d/moved") < 0, "a read-only session removed a file");
    CHECK(pov_session_close(ro) == 0, "close the read-only session");
  }
  pov_session *px = NULL;
  struct pov_session_options px_opts = {.queues = 1, .prefix = "/c-test/d"};
  CHECK(pov_session_open(dev, argv[2], secret, secret_len, &px_opts, &px) == 0, "prefix session");
  if (px) {
    CHECK(pov_stat(px, "/c-test/d/moved", &st) == 0, "inside the prefix");
    rc = pov_stat(px, "/c-test", &st);
    CHECK(rc == -EACCES, "outside the prefix gave %d", rc);
    CHECK(pov_session_close(px) == 0, "close the prefix session");
  }

  CHECK(pov_remove(s, "/c-test/d") == -ENOTEMPTY, "remove a non-empty directory");
  CHECK(pov_remove(s, "/c-test/d/moved") == 0, "remove");
  CHECK(pov_remove(s, "/c-test/d") == 0, "remove a directory");
  CHECK(pov_session_close(s) == 0, "close the session");
  pov_device_close(dev);
  free(in);
  free(out);
  if (failures) {
    fprintf(stderr, "pov_test: %d checks FAILED\n", failures);
    return 1;
  }
  printf("pov_test: all checks passed\n");
  return 0;
}
