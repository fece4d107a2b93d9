/* The PoV host library's C ABI (libpov). Generated from bindings/c/src/ffi.rs by
 * cbindgen: do not edit; build with POV_UPDATE_HEADER=1 to regenerate.
 *
 * Conventions: functions returning int return 0 on success or a negative errno
 * (-ENOENT, -EACCES, ...); functions returning int64_t return a byte count or a
 * negative errno. After a failure, pov_get_error_msg() describes it. Sizes and
 * offsets are in bytes; times in nanoseconds since the Unix epoch. Every handle is
 * safe to use from several threads at once; a handle is freed by its close
 * function, after which it must not be used. Paths are UTF-8 tenant-namespace
 * paths such as "/dir/file". */

#ifndef POV_H
#define POV_H

#include <stdint.h>
#include <stddef.h>

// An open PoV device (pov_device_open).
typedef struct pov_device pov_device;
// An open session of a tenant (pov_session_open).
typedef struct pov_session pov_session;
// An open file of a session (pov_open).
typedef struct pov_file pov_file;

// Open flag: the handle may write, append, truncate and sync (every handle reads).
#define POV_O_WRITE 1

// Open flag: create the file (and its parent directories) if it does not exist.
// Needs `POV_O_WRITE`.
#define POV_O_CREATE 2

// Open flag: with `POV_O_CREATE`, fail with `-EEXIST` if the file exists.
#define POV_O_EXCL 4

// Open flag: truncate the file to 0 bytes. Needs `POV_O_WRITE`.
#define POV_O_TRUNC 8

// Session flag: a read-only session (every request that would change something is
// refused with `-EACCES`/`-EROFS` by the device).
#define POV_SESSION_READ_ONLY 1

// Session flag: responses are authenticated but not encrypted (readable by any
// process that can open the device: only for processes that trust each other).
#define POV_SESSION_INTEGRITY_ONLY 2

// Session flag: no failover (the session is dead at the first loss of the device).
#define POV_SESSION_NO_FAILOVER 4

// Rename flag: fail with `-EEXIST` instead of replacing the destination.
#define POV_RENAME_NOREPLACE 1

// Rename flag: the rename is durable on the backend before the call returns.
#define POV_RENAME_SYNC 2

// `pov_stat.kind` of a regular file.
#define POV_KIND_FILE 1

// `pov_stat.kind` of a directory.
#define POV_KIND_DIR 2

// Options of `pov_session_open`; NULL means every default. Zero fields are defaults.
struct pov_session_options {
  // IO queues (requests in flight at once), 1-64; 0: 4.
  uint32_t queues;
  // `POV_SESSION_*` flags.
  uint32_t flags;
  // Limit the session to this path and what lies below it; NULL or "": the whole
  // namespace.
  const char *prefix;
  // How long a failover may take, in milliseconds; 0: 30000.
  uint64_t failover_timeout_ms;
};

// Attributes of a file or directory.
struct pov_stat {
  // Size in bytes (directories: the backend's figure).
  uint64_t size;
  // Modification time, ns since the Unix epoch.
  uint64_t mtime_ns;
  // Permission bits (`0777` at most).
  uint32_t mode;
  // `POV_KIND_FILE` or `POV_KIND_DIR`.
  uint32_t kind;
};

// Capacity of the storage behind a path (`statvfs`).
struct pov_statfs {
  // Bytes per block.
  uint32_t block_size;
  // Longest name, in bytes.
  uint32_t name_max;
  // Blocks in total.
  uint64_t blocks;
  // Free blocks.
  uint64_t blocks_free;
  // Blocks available to the tenant.
  uint64_t blocks_available;
  // File slots in total (0: no limit known).
  uint64_t files;
  // Free file slots.
  uint64_t files_free;
};

// One directory entry, passed to a `pov_list` callback (valid during the call only).
struct pov_dirent {
  // NUL-terminated UTF-8 name (no `/`).
  const char *name;
  // Size in bytes.
  uint64_t size;
  // `POV_KIND_FILE` or `POV_KIND_DIR`.
  uint32_t kind;
};

// Called by `pov_list` for each entry; returning non-zero stops the listing, and
// `pov_list` returns that value.
typedef int (*pov_list_cb)(void *ctx, const struct pov_dirent *entry);

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The library's version ("0.1.0"), a static string.
const char *pov_version(void);

// The message of the calling thread's last failed call ("" if none); valid until
// that thread's next failed call.
const char *pov_get_error_msg(void);

// Opens the PoV device at `spec` (`/dev/vdX` or `vhost-user:/path/to.sock`) and
// stores the handle in `*out`. Free it with `pov_device_close` (sessions keep what
// they need of it).
//
// Errors: `-EINVAL` (bad spec, NULL), `-ENOENT`/`-EACCES` (cannot open), `-EIO` and
// others (not a PoV device: the message says why).
//
// # Safety
// `spec` is a NUL-terminated string; `out` is writable.
int pov_device_open(const char *spec, pov_device **out);

// Frees a device handle (NULL is ignored).
//
// # Safety
// `dev` is NULL or a handle from `pov_device_open`, not used afterwards.
void pov_device_close(pov_device *dev);

// Opens a session of `tenant` on `dev`, authenticated with the tenant's secret
// (`secret_len` bytes; it never crosses the device and is wiped when the session
// closes), and stores the handle in `*out`. `opts` may be NULL.
//
// Errors: `-EPERM` (wrong secret or unknown tenant), `-EINVAL` (bad argument), `-EIO` and
// others from the device.
//
// # Safety
// `dev` is a device handle; `tenant` a NUL-terminated string; `secret` valid for
// `secret_len` bytes; `opts` NULL or valid (its `prefix` NULL or NUL-terminated);
// `out` writable.
int pov_session_open(const pov_device *dev,
                     const char *tenant,
                     const uint8_t *secret,
                     size_t secret_len,
                     const struct pov_session_options *opts,
                     pov_session **out);

// Closes a session (its open files stop working) and frees the handle, also when
// closing fails (NULL is ignored and returns 0).
//
// # Safety
// `s` is NULL or a handle from `pov_session_open`, not used afterwards.
int pov_session_close(pov_session *s);

// Opens `path` with `POV_O_*` `flags` and stores the file handle in `*out`.
//
// Errors: `-ENOENT`, `-EEXIST` (`POV_O_EXCL`), `-EISDIR`, `-EACCES` (read-only
// session, outside its prefix), `-EINVAL` (create/truncate without `POV_O_WRITE`,
// unknown flags).
//
// # Safety
// `s` is a session handle; `path` NUL-terminated; `out` writable.
int pov_open(const pov_session *s, const char *path, uint32_t flags, pov_file **out);

// Reads up to `len` bytes at `offset` into `buf`; returns the bytes read (less than
// `len` only at the end of the file) or a negative errno. Large reads run as
// parallel 1 MiB requests.
//
// # Safety
// `f` is a file handle; `buf` is writable for `len` bytes.
int64_t pov_file_pread(const pov_file *f, void *buf, size_t len, uint64_t offset);

// Writes `len` bytes of `buf` at `offset`; returns `len` or a negative errno.
//
// # Safety
// `f` is a file handle; `buf` is readable for `len` bytes.
int64_t pov_file_pwrite(const pov_file *f, const void *buf, size_t len, uint64_t offset);

// Appends `len` bytes (at most 1 MiB, one atomic request) at the end of the file;
// stores the offset they landed at in `*offset` (if not NULL).
//
// # Safety
// `f` is a file handle; `buf` readable for `len` bytes; `offset` NULL or writable.
int pov_file_append(const pov_file *f, const void *buf, size_t len, uint64_t *offset);

// Attributes of an open file, into `*out`.
//
// # Safety
// `f` is a file handle; `out` writable.
int pov_file_stat(const pov_file *f, struct pov_stat *out);

// Sets the file's size to `size` bytes (cuts or extends with zeros).
//
// # Safety
// `f` is a file handle.
int pov_file_truncate(const pov_file *f, uint64_t size);

// Makes the file's data durable on the backend (`fsync`).
//
// # Safety
// `f` is a file handle.
int pov_file_sync(const pov_file *f);

// Closes a file and frees the handle, also when closing fails (NULL: returns 0).
//
// # Safety
// `f` is NULL or a handle from `pov_open`, not used afterwards.
int pov_file_close(pov_file *f);

// Attributes of the file or directory at `path`, into `*out`.
//
// Errors: `-ENOENT`, `-EACCES`.
//
// # Safety
// `s` is a session handle; `path` NUL-terminated; `out` writable.
int pov_stat(const pov_session *s, const char *path, struct pov_stat *out);

// Capacity of the storage behind `path`, into `*out`.
//
// # Safety
// `s` is a session handle; `path` NUL-terminated; `out` writable.
int pov_statfs(const pov_session *s, const char *path, struct pov_statfs *out);

// Calls `cb(ctx, entry)` for each entry of the directory at `path`, in the device's
// order. Returns 0, a negative errno, or the first non-zero value `cb` returned.
//
// Errors: `-ENOENT`, `-ENOTDIR`, `-EACCES`.
//
// # Safety
// `s` is a session handle; `path` NUL-terminated; `cb` a valid function.
int pov_list(const pov_session *s, const char *path, pov_list_cb cb, void *ctx);

// Creates the directory `path` with permission bits `mode` (0: the backend's
// default); with `parents` non-zero, creates missing parents too and succeeds if
// the directory exists (`mkdir -p`; `mode` is then ignored).
//
// Errors: `-EEXIST`, `-ENOENT` (a missing parent), `-ENOTDIR`, `-EACCES`.
//
// # Safety
// `s` is a session handle; `path` NUL-terminated.
int pov_mkdir(const pov_session *s, const char *path, uint32_t mode, int parents);

// Removes the file or empty directory at `path`.
//
// Errors: `-ENOENT`, `-ENOTEMPTY`, `-EACCES`.
//
// # Safety
// `s` is a session handle; `path` NUL-terminated.
int pov_remove(const pov_session *s, const char *path);

// Renames `from` to `to` in one step (replacing a file at `to` unless
// `POV_RENAME_NOREPLACE`; durable before returning with `POV_RENAME_SYNC`).
//
// Errors: `-ENOENT`, `-EEXIST`, `-EISDIR`, `-ENOTDIR`, `-ENOTEMPTY`, `-EINVAL`, `-EACCES`.
//
// # Safety
// `s` is a session handle; `from` and `to` NUL-terminated.
int pov_rename(const pov_session *s, const char *from, const char *to, uint32_t flags);

// Sets the permission bits (`mode`, `0777` at most) and/or the modification time
// (`mtime_ns`) of `path`; a negative value leaves that attribute alone.
//
// Errors: `-ENOENT`, `-EACCES`.
//
// # Safety
// `s` is a session handle; `path` NUL-terminated.
int pov_set_attr(const pov_session *s, const char *path, int64_t mode, int64_t mtime_ns);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* POV_H */
