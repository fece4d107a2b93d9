/* The Ceph client headers ceph-sys binds (Debian: libcephfs-dev, librados-dev,
 * librbd-dev). build.rs passes -D_FILE_OFFSET_BITS=64, which libcephfs.h requires. */
#include <dirent.h> /* struct dirent, filled in by ceph_readdir_r */
#include <cephfs/libcephfs.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
