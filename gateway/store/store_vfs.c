/*
 * A commit's WAL frames in one write. SQLite appends each frame to the WAL
 * in two writes, its 24-byte header and then its page, so a commit of n
 * pages makes 2n pwrite calls: at R = 100 these were a third of the store
 * writer's time (docs/performance.md#finding-the-wal-in-one-write). This VFS,
 * STORE_VFS, is the default one (unix) but for WAL files, where the frames
 * SQLite appends one after another are held in a buffer and written in one
 * call before anything that needs them in the file: a sync, a read, a
 * write elsewhere, a truncation, its size, a file control, a close, or the
 * end of a commit's frames.
 *
 * Nothing is lost by holding frames back. Other connections read a frame
 * only once its commit is published in the WAL index's header, which
 * SQLite writes after the commit's frames (and, with synchronous=FULL, as
 * the store has it but for a held batch, after their sync); the writer's
 * own connection reads only through us. The end of a commit is told by its
 * last frame's header, whose second field (the database's size in pages
 * after the commit) is nonzero only there
 * (https://www.sqlite.org/fileformat2.html#walformat);
 * so the frames reach the file before SQLite goes on even where it does not
 * sync. What is not appended goes straight to the file: a frame rewritten in
 * place, and the checksums SQLite rewrites at a commit after that, whose
 * last write is a header with no page after it.
 *
 * Only the WAL is wrapped: other files are the default VFS's own, opened in
 * the same memory. Only the store's writer uses this VFS; its other
 * connections only read the WAL.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/store_internal.h"
#include "store/store_test.h"

#define WAL_HEADER 32
#define WAL_FRAME_HEADER 24
/* SQLite 3.40's unix VFS writes at most 128 KiB - 1 bytes in one call, and
 * takes a longer write's length modulo 128 KiB, reporting the short write
 * as a full disk: a longer run of frames goes in parts. */
#define BUF_MAX 0x1ffff

struct wal_file {
	sqlite3_file base;
	sqlite3_file *real; /* the default VFS's file, after this struct */
	unsigned char *buf; /* BUF_MAX bytes, from the first write */
	size_t len;
	sqlite3_int64 at;   /* the file offset of buf[0] */
	sqlite3_int64 end;  /* the furthest byte written since the WAL started over */
	bool header_held;   /* the last write was a frame's header, held in buf */
	bool commit_header; /* ... and that frame ends a commit */
	/* Every write as it comes: without powersafe overwrite SQLite pads a
	 * commit to a sector boundary, splitting a frame around a sync, and a
	 * piece of 24 bytes would pass for a header. */
	bool direct;
};

static sqlite3_vfs *real_vfs;
static sqlite3_vfs vfs;
static int vfs_rc = SQLITE_ERROR;
static pthread_once_t vfs_once = PTHREAD_ONCE_INIT;
static atomic_uint_fast64_t wal_writes; /* writes that reached a WAL (tests) */
static atomic_int failing_writes;       /* tests: writes to fail, as a full disk */
static atomic_int failing_syncs;        /* tests: syncs to fail, as an I/O error */

/* The file's size in the VFS's memory: the real file follows, 8-aligned
 * as SQLite aligns the whole. */
#define WAL_FILE_SIZE ((sizeof(struct wal_file) + 7) & ~(size_t)7)

static int write_real(struct wal_file *f, const void *data, int amt, sqlite3_int64 off)
{
	if (atomic_load(&failing_writes) > 0) {
		atomic_fetch_sub(&failing_writes, 1);
		return SQLITE_FULL;
	}
	atomic_fetch_add(&wal_writes, 1);
	return f->real->pMethods->xWrite(f->real, data, amt, off);
}

/*
 * Write what is held. Written or not, it goes: a write that fails fails
 * the transaction that made it (below), and SQLite writes its frames again
 * from the start; holding them would fail every later read until the disk
 * had room.
 */
static int flush(struct wal_file *f)
{
	if (f->len == 0)
		return SQLITE_OK;
	int rc = write_real(f, f->buf, (int)f->len, f->at);
	f->len = 0;
	return rc;
}

/*
 * The flush before a read, a truncation, the file's size, a file control
 * or a close, whose failure is reported as an I/O error, never a full
 * disk: after SQLITE_FULL SQLite may undo only the statement that read and
 * go on to commit frames an earlier statement spilled, which the file does
 * not hold; after an I/O error it rolls the whole transaction back. A
 * failure in a write or a sync fails the transaction whatever its code.
 */
static int flush_before(struct wal_file *f)
{
	int rc = flush(f);
	return rc == SQLITE_OK ? rc : SQLITE_IOERR_WRITE;
}

/* Room for n more bytes in buf; false to write through instead. */
static bool reserve(struct wal_file *f, size_t n)
{
	if (!f->buf)
		f->buf = malloc(BUF_MAX);
	return f->buf && f->len + n <= BUF_MAX;
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * Held back: the WAL's header, a frame's header, and the page that follows
 * a header held. Anything else goes to the file as it comes, after what is
 * held: a frame rewritten in place, checksums rewritten in place at a
 * commit (the last of them a header with no page after it), and the pieces
 * of a frame that SQLite splits around a sync when it pads a commit to a
 * sector boundary (without powersafe overwrite).
 */
static bool held(struct wal_file *f, bool after_header, int amt, sqlite3_int64 off)
{
	if (f->direct || off < f->end) /* off < end: in place */
		return false;
	if (amt == WAL_FRAME_HEADER || (off == 0 && amt == WAL_HEADER))
		return true;
	return after_header && off == f->at + (sqlite3_int64)f->len;
}

static int wal_write(sqlite3_file *file, const void *data, int amt, sqlite3_int64 off)
{
	struct wal_file *f = (struct wal_file *)file;
	bool after_header = f->header_held, ends_commit = f->commit_header;
	f->header_held = f->commit_header = false;
	if (off == 0) /* the WAL's header: it starts over */
		f->end = 0;
	bool hold = held(f, after_header, amt, off);
	if (off + amt > f->end)
		f->end = off + amt;
	int rc = SQLITE_OK;
	if (f->len > 0 && (!hold || off != f->at + (sqlite3_int64)f->len))
		rc = flush(f);
	if (rc == SQLITE_OK && hold && !reserve(f, (size_t)amt))
		rc = flush(f);
	if (rc != SQLITE_OK)
		return rc;
	if (!hold || !reserve(f, (size_t)amt))
		return write_real(f, data, amt, off);
	if (f->len == 0)
		f->at = off;
	memcpy(f->buf + f->len, data, (size_t)amt);
	f->len += (size_t)amt;
	if (amt == WAL_FRAME_HEADER) {
		f->header_held = true;
		f->commit_header = be32((const unsigned char *)data + 4) != 0;
	}
	return ends_commit ? flush(f) : SQLITE_OK;
}

static int wal_close(sqlite3_file *file)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush_before(f);
	int crc = f->real->pMethods->xClose(f->real);
	if (f->buf)
		sodium_memzero(f->buf, BUF_MAX);
	free(f->buf);
	f->buf = NULL;
	return rc != SQLITE_OK ? rc : crc;
}

static int wal_read(sqlite3_file *file, void *out, int amt, sqlite3_int64 off)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush_before(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, out, amt, off);
}

static int wal_truncate(sqlite3_file *file, sqlite3_int64 size)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush_before(f);
	if (rc == SQLITE_OK && size < f->end)
		f->end = size;
	return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wal_sync(sqlite3_file *file, int flags)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush(f);
	if (rc == SQLITE_OK && store_take_failure(&failing_syncs))
		return SQLITE_IOERR_FSYNC; /* what was written stays written */
	return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int wal_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush_before(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int wal_lock(sqlite3_file *file, int lock)
{
	struct wal_file *f = (struct wal_file *)file;
	return f->real->pMethods->xLock(f->real, lock);
}

static int wal_unlock(sqlite3_file *file, int lock)
{
	struct wal_file *f = (struct wal_file *)file;
	return f->real->pMethods->xUnlock(f->real, lock);
}

static int wal_check_reserved(sqlite3_file *file, int *out)
{
	struct wal_file *f = (struct wal_file *)file;
	return f->real->pMethods->xCheckReservedLock(f->real, out);
}

static int wal_file_control(sqlite3_file *file, int op, void *arg)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush_before(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xFileControl(f->real, op, arg);
}

static int wal_sector_size(sqlite3_file *file)
{
	struct wal_file *f = (struct wal_file *)file;
	return f->real->pMethods->xSectorSize(f->real);
}

static int wal_device(sqlite3_file *file)
{
	struct wal_file *f = (struct wal_file *)file;
	return f->real->pMethods->xDeviceCharacteristics(f->real);
}

/* Version 1: a WAL is never memory-mapped, and its shared memory is the
 * database file's. */
static const sqlite3_io_methods wal_methods = {
    .iVersion = 1,
    .xClose = wal_close,
    .xRead = wal_read,
    .xWrite = wal_write,
    .xTruncate = wal_truncate,
    .xSync = wal_sync,
    .xFileSize = wal_file_size,
    .xLock = wal_lock,
    .xUnlock = wal_unlock,
    .xCheckReservedLock = wal_check_reserved,
    .xFileControl = wal_file_control,
    .xSectorSize = wal_sector_size,
    .xDeviceCharacteristics = wal_device,
};

/* Any other file is the default VFS's, in place at the start of file. */
static int vfs_open(sqlite3_vfs *v, const char *name, sqlite3_file *file, int flags, int *out_flags)
{
	(void)v;
	if (!(flags & SQLITE_OPEN_WAL))
		return real_vfs->xOpen(real_vfs, name, file, flags, out_flags);
	struct wal_file *f = (struct wal_file *)file;
	memset(f, 0, sizeof(*f));
	f->real = (sqlite3_file *)((char *)file + WAL_FILE_SIZE);
	int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out_flags);
	/* Methods only for a file that opened: SQLite closes only those. */
	f->base.pMethods = rc == SQLITE_OK ? &wal_methods : NULL;
	/* The database's setting, which SQLite's WAL follows; the name of a WAL
	 * carries its database's URI parameters. */
	f->direct = !sqlite3_uri_boolean(name, "psow",
	                                 !sqlite3_compileoption_used("POWERSAFE_OVERWRITE=0"));
	return rc;
}

static void vfs_register(void)
{
	real_vfs = sqlite3_vfs_find(NULL);
	if (!real_vfs)
		return;
	/* The default VFS's methods, which take it as their first argument and
	 * read from it only its own fields (pAppData, mxPathname), copied. */
	vfs = *real_vfs;
	vfs.pNext = NULL;
	vfs.zName = STORE_VFS;
	vfs.xOpen = vfs_open;
	vfs.szOsFile = (int)WAL_FILE_SIZE + real_vfs->szOsFile;
	vfs_rc = sqlite3_vfs_register(&vfs, 0);
}

int store_vfs_register(void)
{
	pthread_once(&vfs_once, vfs_register);
	return vfs_rc;
}

const char *store_test_vfs(void)
{
	return store_vfs_register() == SQLITE_OK ? STORE_VFS : NULL;
}

uint64_t store_test_wal_writes(void)
{
	return atomic_load(&wal_writes);
}

int store_vfs_datasync(int fd)
{
	if (store_take_failure(&failing_syncs)) {
		errno = EIO;
		return -1;
	}
	return fdatasync(fd);
}

void store_test_fail_wal_writes(int n)
{
	atomic_store(&failing_writes, n);
}

void store_test_fail_wal_syncs(int n)
{
	atomic_store(&failing_syncs, n);
}
