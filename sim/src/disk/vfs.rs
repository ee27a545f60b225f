//! The SQLite VFS `drill`: SQLite's files live on the simulated disk of the node that opens them.
//!
//! The VFS is registered once per process as the default VFS. Each call finds the current madsim
//! node and its disk; each open handle remembers the node's crash generation, and any call on a
//! handle from before the node's last crash fails and changes nothing. Between a crash and the
//! node's boot every call of that node is refused, so code a killed node runs while it is being
//! dropped cannot touch the disk.
//!
//! The device characteristics reported are 0 (no sequential, safe-append or powersafe-overwrite
//! claims) and the configured sector size, which is exactly what the crash model of [`super::file`]
//! takes away. SQLite's randomness comes from the run's `sqlite` stream and its time from the node
//! clock. The WAL index lives in shared memory the VFS allocates per open handle (one connection
//! per database per node), so every open starts from an empty index and recovers it from the WAL.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::{Arc, Once};

use libsqlite3_sys as ffi;
use madsim::task::NodeId;
use serde_json::json;

use super::{crash_model, page_checksum, DiskSim, FileEntry, IoOp, NodeDisk, Shm, CHECKSUM_BYTES};
use crate::trace;

/// Name under which the VFS is registered.
pub const VFS_NAME: &CStr = c"drill";

/// Size of one shared-memory region SQLite asks for.
const SHM_REGION_BYTES: usize = 32 * 1024;

#[repr(C)]
struct SimFile {
    base: ffi::sqlite3_file,
    handle: *mut Handle,
}

struct Handle {
    disk: Arc<DiskSim>,
    node: NodeId,
    id: u64,
    generation: u64,
    name: String,
    main_db: bool,
    delete_on_close: bool,
    refused: bool,
}

static REGISTER: Once = Once::new();

/// Registers the VFS as SQLite's default, once per process. Also resets SQLite's PRNG so that
/// it reseeds from the current run's stream on its next use.
pub fn register() {
    REGISTER.call_once(|| {
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: std::mem::size_of::<SimFile>() as c_int,
            mxPathname: 512,
            pNext: ptr::null_mut(),
            zName: VFS_NAME.as_ptr(),
            pAppData: ptr::null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        // SAFETY: the VFS struct is leaked, so it lives as long as the process, as SQLite needs.
        let rc = unsafe {
            ffi::sqlite3_initialize();
            ffi::sqlite3_vfs_register(Box::leak(vfs), 1)
        };
        assert_eq!(rc, ffi::SQLITE_OK, "registering the drill VFS");
    });
}

/// Resets SQLite's process-global PRNG; its next use reseeds from the current run's stream.
pub fn reset_sqlite_prng() {
    // SAFETY: documented API; N=0 with a null buffer resets the generator.
    unsafe { ffi::sqlite3_randomness(0, ptr::null_mut()) };
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

/// The disk and node of the calling task, when called inside a simulation.
fn current() -> Option<(Arc<DiskSim>, NodeId)> {
    madsim::runtime::Handle::try_current().ok()?;
    Some((DiskSim::current(), madsim::plugin::node()))
}

/// Runs `f` on the handle's node disk if the handle is from the node's current generation.
unsafe fn with_handle<R>(file: *mut ffi::sqlite3_file, stale: R, f: impl FnOnce(&mut Handle, &mut NodeDisk, &super::DiskConfig) -> R) -> R {
    let h = &mut *(*(file as *mut SimFile)).handle;
    let disk = h.disk.clone();
    let node = h.node;
    let out = {
        let mut s = disk.lock();
        let s = &mut *s;
        let Some(d) = s.nodes.get_mut(&h.node) else { return stale };
        if d.down || d.generation != h.generation {
            if !h.refused {
                h.refused = true;
                trace::emit(&d.name, "disk.stale_refused", json!({"file": h.name, "generation": h.generation}));
            }
            return stale;
        }
        f(h, d, &s.config)
    };
    disk.after_call(node);
    out
}

unsafe fn cstr(p: *const c_char) -> String {
    CStr::from_ptr(p).to_string_lossy().into_owned()
}

unsafe extern "C" fn x_open_inner(
    _vfs: *mut ffi::sqlite3_vfs,
    z_name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let sf = file as *mut SimFile;
    (*sf).base.pMethods = ptr::null();
    let Some((disk, node)) = current() else { return ffi::SQLITE_CANTOPEN };
    let mut s = disk.lock();
    let s = &mut *s;
    let config = s.config;
    let Some(d) = s.nodes.get_mut(&node) else { return ffi::SQLITE_CANTOPEN };
    if d.down {
        return ffi::SQLITE_CANTOPEN;
    }
    let name = if z_name.is_null() {
        d.next_temp += 1;
        format!("temp-{}", d.next_temp)
    } else {
        cstr(z_name)
    };
    if let Some(rc) = d.tick(Some(IoOp::Open), &name, crash_model(&d.faults, &config)) {
        return if rc == ffi::SQLITE_IOERR { ffi::SQLITE_CANTOPEN } else { rc };
    }
    let exists = d.files.get(&name).is_some_and(|f| f.exists());
    if exists && flags & ffi::SQLITE_OPEN_EXCLUSIVE != 0 {
        return ffi::SQLITE_CANTOPEN;
    }
    if !exists {
        if flags & ffi::SQLITE_OPEN_CREATE == 0 {
            return ffi::SQLITE_CANTOPEN;
        }
        match d.files.get_mut(&name) {
            Some(f) => f.recreate(),
            None => {
                d.files.insert(name.clone(), FileEntry::created());
            }
        }
    }
    d.next_handle += 1;
    let h = Box::new(Handle {
        disk: disk.clone(),
        node,
        id: d.next_handle,
        generation: d.generation,
        name,
        main_db: flags & ffi::SQLITE_OPEN_MAIN_DB != 0,
        delete_on_close: flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0,
        refused: false,
    });
    (*sf).handle = Box::into_raw(h);
    (*sf).base.pMethods = &IO_METHODS;
    if !out_flags.is_null() {
        *out_flags = flags;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_delete_inner(_vfs: *mut ffi::sqlite3_vfs, z_name: *const c_char, sync_dir: c_int) -> c_int {
    let Some((disk, node)) = current() else { return ffi::SQLITE_IOERR_DELETE };
    let name = cstr(z_name);
    let mut s = disk.lock();
    let s = &mut *s;
    let config = s.config;
    let Some(d) = s.nodes.get_mut(&node) else { return ffi::SQLITE_IOERR_DELETE };
    if d.down {
        return ffi::SQLITE_IOERR_DELETE;
    }
    if d.tick(None, &name, crash_model(&d.faults, &config)).is_some() {
        return ffi::SQLITE_IOERR_DELETE;
    }
    match d.files.get_mut(&name) {
        Some(f) if f.exists() => {
            f.delete(false);
            if sync_dir != 0 {
                d.flush_deletes();
            }
            ffi::SQLITE_OK
        }
        _ => ffi::SQLITE_IOERR_DELETE_NOENT,
    }
}

unsafe extern "C" fn x_access_inner(_vfs: *mut ffi::sqlite3_vfs, z_name: *const c_char, flags: c_int, res: *mut c_int) -> c_int {
    *res = 0;
    let Some((disk, node)) = current() else { return ffi::SQLITE_IOERR_ACCESS };
    let name = cstr(z_name);
    let mut s = disk.lock();
    let s = &mut *s;
    let config = s.config;
    let Some(d) = s.nodes.get_mut(&node) else { return ffi::SQLITE_IOERR_ACCESS };
    if d.down || d.tick(None, &name, crash_model(&d.faults, &config)).is_some() {
        return ffi::SQLITE_IOERR_ACCESS;
    }
    let f = d.files.get(&name).filter(|f| f.exists());
    // Like a POSIX VFS, an empty file does not count as existing: SQLite relies on this when it
    // looks for a hot journal.
    *res = match (f, flags) {
        (Some(f), ffi::SQLITE_ACCESS_EXISTS) => (!f.is_empty()) as c_int,
        (Some(_), _) => 1,
        (None, _) => 0,
    };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    z_name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let rc = x_open_inner(vfs, z_name, file, flags, out_flags);
    after_named_call();
    rc
}

unsafe extern "C" fn x_delete(vfs: *mut ffi::sqlite3_vfs, z_name: *const c_char, sync_dir: c_int) -> c_int {
    let rc = x_delete_inner(vfs, z_name, sync_dir);
    after_named_call();
    rc
}

unsafe extern "C" fn x_access(vfs: *mut ffi::sqlite3_vfs, z_name: *const c_char, flags: c_int, res: *mut c_int) -> c_int {
    let rc = x_access_inner(vfs, z_name, flags, res);
    after_named_call();
    rc
}

/// A call by name may have been the one a power cut fired on.
fn after_named_call() {
    if let Some((disk, node)) = current() {
        disk.after_call(node);
    }
}

unsafe extern "C" fn x_full_pathname(_vfs: *mut ffi::sqlite3_vfs, z_name: *const c_char, n_out: c_int, z_out: *mut c_char) -> c_int {
    let bytes = CStr::from_ptr(z_name).to_bytes();
    if bytes.len() + 1 > n_out as usize {
        return ffi::SQLITE_CANTOPEN;
    }
    ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, z_out, bytes.len());
    *z_out.add(bytes.len()) = 0;
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_dl_open(_vfs: *mut ffi::sqlite3_vfs, _name: *const c_char) -> *mut c_void {
    ptr::null_mut()
}

unsafe extern "C" fn x_dl_error(_vfs: *mut ffi::sqlite3_vfs, n: c_int, z: *mut c_char) {
    let msg = c"extensions are not loaded in a simulation";
    let len = (msg.to_bytes().len()).min((n as usize).saturating_sub(1));
    ptr::copy_nonoverlapping(msg.as_ptr(), z, len);
    *z.add(len) = 0;
}

unsafe extern "C" fn x_dl_sym(
    _vfs: *mut ffi::sqlite3_vfs,
    _h: *mut c_void,
    _sym: *const c_char,
) -> Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)> {
    None
}

unsafe extern "C" fn x_dl_close(_vfs: *mut ffi::sqlite3_vfs, _h: *mut c_void) {}

unsafe extern "C" fn x_randomness(_vfs: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let buf = std::slice::from_raw_parts_mut(out as *mut u8, n as usize);
    match current() {
        Some((disk, _)) => disk.sqlite_random(buf),
        // Outside a simulation there is no seed; zeros keep SQLite deterministic all the same.
        None => buf.fill(0),
    }
    n
}

unsafe extern "C" fn x_sleep(_vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    // One connection per database per node never waits on a lock, so SQLite has no reason to
    // sleep; time is not advanced from inside a synchronous call.
    micros
}

/// Julian day number of the Unix epoch, in milliseconds.
const UNIX_EPOCH_JULIAN_MS: i64 = 210_866_760_000_000;

unsafe extern "C" fn x_current_time_int64(_vfs: *mut ffi::sqlite3_vfs, out: *mut ffi::sqlite3_int64) -> c_int {
    let unix_ms = match current() {
        Some((_, node)) => crate::clock::node_unix_ms(node),
        None => crate::clock::EPOCH_UNIX_MS,
    };
    *out = UNIX_EPOCH_JULIAN_MS + unix_ms;
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_current_time(vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let mut ms: ffi::sqlite3_int64 = 0;
    x_current_time_int64(vfs, &mut ms);
    *out = ms as f64 / 86_400_000.0;
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_get_last_error(_vfs: *mut ffi::sqlite3_vfs, _n: c_int, _z: *mut c_char) -> c_int {
    0
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    let sf = file as *mut SimFile;
    if (*sf).handle.is_null() {
        return ffi::SQLITE_OK;
    }
    with_handle(file, (), |h, d, _| {
        if h.delete_on_close {
            if let Some(f) = d.files.get_mut(&h.name) {
                f.delete(true);
            }
            d.files.remove(&h.name);
        }
    });
    drop(Box::from_raw((*sf).handle));
    (*sf).handle = ptr::null_mut();
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amt: c_int, offset: ffi::sqlite3_int64) -> c_int {
    let buf = std::slice::from_raw_parts_mut(buf as *mut u8, amt as usize);
    with_handle(file, ffi::SQLITE_IOERR_READ, |h, d, c| {
        if let Some(rc) = d.tick(Some(IoOp::Read), &h.name, crash_model(&d.faults, c)) {
            return rc;
        }
        let Some(f) = d.files.get(&h.name) else { return ffi::SQLITE_IOERR_READ };
        let n = f.read(buf, offset as u64);
        if n < buf.len() {
            return ffi::SQLITE_IOERR_SHORT_READ;
        }
        if checksummed(h, c, buf.len(), offset) && buf.iter().any(|&b| b != 0) {
            let want = page_checksum(buf);
            if buf[buf.len() - CHECKSUM_BYTES..] != want {
                trace::emit(&d.name, "disk.checksum_mismatch", json!({"file": h.name, "offset": offset}));
                return ffi::SQLITE_IOERR_DATA;
            }
        }
        ffi::SQLITE_OK
    })
}

fn checksummed(h: &Handle, c: &super::DiskConfig, amt: usize, offset: i64) -> bool {
    c.checksums && h.main_db && amt == c.page_size && (offset as u64).is_multiple_of(c.page_size as u64)
}

unsafe extern "C" fn x_write(file: *mut ffi::sqlite3_file, buf: *const c_void, amt: c_int, offset: ffi::sqlite3_int64) -> c_int {
    let data = std::slice::from_raw_parts(buf as *const u8, amt as usize);
    with_handle(file, ffi::SQLITE_IOERR_WRITE, |h, d, c| {
        if let Some(rc) = d.tick(Some(IoOp::Write), &h.name, crash_model(&d.faults, c)) {
            return rc;
        }
        let len = d.files.get(&h.name).map(|f| f.len()).unwrap_or(0);
        let grow = (offset as u64 + amt as u64).saturating_sub(len);
        if !d.fits(grow) {
            trace::emit(&d.name, "disk.full", json!({"file": h.name, "offset": offset, "bytes": amt}));
            return ffi::SQLITE_FULL;
        }
        let mut page;
        let data = if checksummed(h, c, data.len(), offset) {
            if offset == 0 {
                check_header(data, c.page_size);
            }
            page = data.to_vec();
            let sum = page_checksum(&page);
            let n = page.len();
            page[n - CHECKSUM_BYTES..].copy_from_slice(&sum);
            &page[..]
        } else {
            data
        };
        let Some(f) = d.files.get_mut(&h.name) else { return ffi::SQLITE_IOERR_WRITE };
        f.write(data, offset as u64);
        ffi::SQLITE_OK
    })
}

/// A database written with checksums must have reserved room for them and use the configured
/// page size; anything else is a misconfigured world, not a disk fault.
fn check_header(page: &[u8], page_size: usize) {
    let raw = u16::from_be_bytes([page[16], page[17]]) as usize;
    let header_page_size = if raw == 1 { 65536 } else { raw };
    assert_eq!(header_page_size, page_size, "database page size differs from the disk's configured page size");
    assert_eq!(
        page[20] as usize, CHECKSUM_BYTES,
        "database reserves {} bytes per page, page checksums need {CHECKSUM_BYTES}: set SQLITE_FCNTL_RESERVE_BYTES before the first write",
        page[20]
    );
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    with_handle(file, ffi::SQLITE_IOERR_TRUNCATE, |h, d, c| {
        if d.tick(None, &h.name, crash_model(&d.faults, c)).is_some() {
            return ffi::SQLITE_IOERR_TRUNCATE;
        }
        let Some(f) = d.files.get_mut(&h.name) else { return ffi::SQLITE_IOERR_TRUNCATE };
        f.truncate(size as u64);
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    with_handle(file, ffi::SQLITE_IOERR_FSYNC, |h, d, c| {
        if let Some(rc) = d.tick(Some(IoOp::Sync), &h.name, crash_model(&d.faults, c)) {
            return rc;
        }
        let Some(f) = d.files.get_mut(&h.name) else { return ffi::SQLITE_IOERR_FSYNC };
        f.sync();
        d.flush_deletes();
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_file_size(file: *mut ffi::sqlite3_file, size: *mut ffi::sqlite3_int64) -> c_int {
    with_handle(file, ffi::SQLITE_IOERR_FSTAT, |h, d, c| {
        if d.tick(None, &h.name, crash_model(&d.faults, c)).is_some() {
            return ffi::SQLITE_IOERR_FSTAT;
        }
        *size = d.files.get(&h.name).map(|f| f.len()).unwrap_or(0) as ffi::sqlite3_int64;
        ffi::SQLITE_OK
    })
}

// Locks: one connection per database per node never contends, so locks are always granted to a
// live handle and refused to a stale one.
unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    with_handle(file, ffi::SQLITE_IOERR_LOCK, |_, _, _| ffi::SQLITE_OK)
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    with_handle(file, ffi::SQLITE_IOERR_UNLOCK, |_, _, _| ffi::SQLITE_OK)
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, res: *mut c_int) -> c_int {
    *res = 0;
    with_handle(file, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, |_, _, _| ffi::SQLITE_OK)
}

unsafe extern "C" fn x_file_control(_file: *mut ffi::sqlite3_file, _op: c_int, _arg: *mut c_void) -> c_int {
    ffi::SQLITE_NOTFOUND
}

unsafe extern "C" fn x_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let h = &*(*(file as *mut SimFile)).handle;
    h.disk.lock().config.sector_size as c_int
}

unsafe extern "C" fn x_device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    0
}

unsafe extern "C" fn x_shm_map(file: *mut ffi::sqlite3_file, region: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int {
    *out = ptr::null_mut();
    assert_eq!(size as usize, SHM_REGION_BYTES, "SQLite asked for an unexpected shm region size");
    with_handle(file, ffi::SQLITE_IOERR_SHMMAP, |h, d, _| {
        let shm = d.shm.entry(h.id).or_insert_with(Shm::default);
        let region = region as usize;
        if region >= shm.regions.len() {
            if extend == 0 {
                return ffi::SQLITE_OK;
            }
            while shm.regions.len() <= region {
                shm.regions.push(vec![0u8; SHM_REGION_BYTES].into_boxed_slice());
            }
        }
        *out = shm.regions[region].as_mut_ptr() as *mut c_void;
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_shm_lock(file: *mut ffi::sqlite3_file, _offset: c_int, _n: c_int, _flags: c_int) -> c_int {
    with_handle(file, ffi::SQLITE_IOERR_SHMLOCK, |_, _, _| ffi::SQLITE_OK)
}

unsafe extern "C" fn x_shm_barrier(_file: *mut ffi::sqlite3_file) {}

unsafe extern "C" fn x_shm_unmap(_file: *mut ffi::sqlite3_file, _delete: c_int) -> c_int {
    // Regions stay allocated until the run ends (see `Shm`); the next open maps fresh ones.
    ffi::SQLITE_OK
}
