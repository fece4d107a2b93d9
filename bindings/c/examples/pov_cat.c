/* A minimal PoV client in C: prints a PoV file to standard output.
 *
 *   pov_cat DEVICE TENANT SECRET_FILE PATH
 *   e.g. pov_cat vhost-user:/run/pov/pov0.sock acme ~/.pov-secret /notes.txt
 *
 * Build: cc -I bindings/c/include pov_cat.c -L target/release -lpov -o pov_cat */
#include "pov.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s DEVICE TENANT SECRET_FILE PATH\n", argv[0]);
    return 2;
  }
  unsigned char secret[256];
  FILE *kf = fopen(argv[3], "rb");
  if (!kf) {
    perror(argv[3]);
    return 2;
  }
  size_t secret_len = fread(secret, 1, sizeof secret, kf);
  fclose(kf);
  while (secret_len > 0 && secret[secret_len - 1] == '\n') secret_len--;

  pov_device *dev;
  pov_session *s;
  pov_file *f;
  if (pov_device_open(argv[1], &dev) != 0 ||
      pov_session_open(dev, argv[2], secret, secret_len, NULL, &s) != 0) {
    fprintf(stderr, "pov_cat: %s\n", pov_get_error_msg());
    return 1;
  }
  memset(secret, 0, sizeof secret);
  if (pov_open(s, argv[4], 0, &f) != 0) {
    fprintf(stderr, "pov_cat: %s\n", pov_get_error_msg());
    return 1;
  }
  static char buf[1 << 20];
  uint64_t off = 0;
  int64_t n;
  while ((n = pov_file_pread(f, buf, sizeof buf, off)) > 0) {
    fwrite(buf, 1, (size_t)n, stdout);
    off += (uint64_t)n;
  }
  int rc = n < 0 ? 1 : 0;
  if (n < 0) fprintf(stderr, "pov_cat: %s\n", pov_get_error_msg());
  pov_file_close(f);
  pov_session_close(s);
  pov_device_close(dev);
  return rc;
}
