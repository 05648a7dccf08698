/*
 * A commit's WAL frames in one write. SQLite appends each frame to the WAL
 * in two writes, its 24-byte header and then its page, so a commit of n
 * pages makes 2n pwrite calls: at R = 100 these were a third of the store
 * writer's time (docs/performance.md#finding-the-wal-in-one-write). This VFS,
 * STORE_VFS, is the default one (unix) but for WAL files, whose writes that
 * continue the one before are gathered in a buffer and written in one call
 * before anything that needs them in the file: a sync, a read, a
 * truncation, its size, a close, or the end of a commit's frames.
 *
 * Nothing is lost by holding frames back: SQLite counts a frame in the WAL
 * only from the WAL index, which it updates after a commit's frames are
 * written (and, with synchronous=FULL as the store has it, synced), and a
 * crash before then leaves a WAL that ends at the last commit either way.
 * The end of a commit is told by its last frame's header, whose second
 * field (the database's size in pages after the commit) is nonzero only
 * there (https://www.sqlite.org/fileformat2.html#walformat); so the frames
 * reach the file before SQLite goes on even where it does not sync.
 *
 * Only the WAL is wrapped: other files are the default VFS's own, opened in
 * the same memory. The store's writer uses this VFS; its other connections
 * only read the WAL.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"
#include "store/store_test.h"

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
	bool commit_header; /* the last write was a commit frame's header */
};

static sqlite3_vfs *real_vfs;
static sqlite3_vfs vfs;
static int vfs_rc = SQLITE_ERROR;
static pthread_once_t vfs_once = PTHREAD_ONCE_INIT;
static atomic_uint_fast64_t wal_writes; /* writes that reached a WAL (tests) */

/* The file's size in the VFS's memory, rounded up to keep real aligned. */
#define WAL_FILE_SIZE ((sizeof(struct wal_file) + 15) & ~(size_t)15)

static int flush(struct wal_file *f)
{
	if (f->len == 0)
		return SQLITE_OK;
	int rc = f->real->pMethods->xWrite(f->real, f->buf, (int)f->len, f->at);
	atomic_fetch_add(&wal_writes, 1);
	/* Written or not, they go: a failed write fails the transaction, and
	 * SQLite then writes its frames again from the start. */
	f->len = 0;
	return rc;
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

static int wal_write(sqlite3_file *file, const void *data, int amt, sqlite3_int64 off)
{
	struct wal_file *f = (struct wal_file *)file;
	bool ends_commit = f->commit_header;
	f->commit_header = amt == WAL_FRAME_HEADER && be32((const unsigned char *)data + 4) != 0;
	int rc = SQLITE_OK;
	if (f->len > 0 && off != f->at + (sqlite3_int64)f->len)
		rc = flush(f); /* not a continuation */
	if (rc == SQLITE_OK && !reserve(f, (size_t)amt))
		rc = flush(f);
	if (rc != SQLITE_OK)
		return rc;
	if (!reserve(f, (size_t)amt)) { /* larger than the buffer: as it comes */
		atomic_fetch_add(&wal_writes, 1);
		return f->real->pMethods->xWrite(f->real, data, amt, off);
	}
	if (f->len == 0)
		f->at = off;
	memcpy(f->buf + f->len, data, (size_t)amt);
	f->len += (size_t)amt;
	return ends_commit ? flush(f) : SQLITE_OK;
}

static int wal_close(sqlite3_file *file)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush(f);
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
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, out, amt, off);
}

static int wal_truncate(sqlite3_file *file, sqlite3_int64 size)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wal_sync(sqlite3_file *file, int flags)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int wal_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
	struct wal_file *f = (struct wal_file *)file;
	int rc = flush(f);
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
	int rc = flush(f);
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
