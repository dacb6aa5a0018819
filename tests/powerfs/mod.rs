//! powerfs: an in-memory FUSE file system that models POWER LOSS, for tests.
//!
//! Every inode keeps two states: `live` (what reads and listings see) and `durable` (what
//! survives a power cut). Data becomes durable only through `fsync`/`fdatasync` of the file
//! (through any of its handles); directory entries only through `fsync` of the directory
//! itself (FUSE `fsyncdir`). That is stricter than ext4 on purpose: a program that is
//! correct here does not rely on any file system's extra ordering. Metadata other than
//! sizes and entries (mode, times) is not modelled: it is the same live and durable.
//!
//! [`PowerFs::cut`] is the power cut: live state := durable state everywhere, inodes no
//! longer reachable from the durable tree vanish, every open handle dies (EIO), and the
//! named process is BANNED: every later request from any of its threads answers EIO and
//! changes nothing. The ban is what makes a cut honest against a process that is only
//! stopped (SIGSTOP) at the cut and killed later: its in-flight writes and syncs must not
//! land after the "power" came back, or a later successful sync would bring back data
//! that a real power cut had lost. Requests from processes that no longer exist are
//! refused the same way.
//!
//! [`PowerFs::arm`] cuts at an exact moment: the nth matching request from another process
//! stops that process (SIGSTOP), cuts without applying the request and answers it EIO.
//!
//! The kernel must not hide the model: every file is opened FOPEN_DIRECT_IO (all reads and
//! writes reach us, no page cache, no writeback cache) and entry/attr TTLs are zero, so the
//! first lookup after a cut sees the durable state. Files are also opened FOPEN_NOFLUSH:
//! close(2) sends nothing and so never reports an error (see `FILE_OPEN`).
//!
//! Requests from the test process itself never count for a trigger and are never banned
//! (the FUSE handler thread lives in it: stopping it would hang the mount).
//!
//! Processes are told apart through /proc: FUSE gives the calling THREAD id (for io_uring,
//! the submitting thread for O_DIRECT reads and writes, an `iou-wrk-*` thread for opens,
//! fsyncs and buffered writes); `Tgid:` in /proc/<tid>/status names its process.
//! `POWERFS_TRACE=1` in the environment logs every request with its thread and process.
#![allow(dead_code)]

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    SessionACL, TimeOrNow, WriteFlags,
};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

const ROOT: u64 = 1;
const SECTOR: u64 = 512;
/// Entry and attribute TTL: zero, so the kernel asks again after every cut.
const TTL: Duration = Duration::ZERO;
/// How files are opened. Direct I/O: every read and write reaches the model, none is
/// cached. No flush on close: a close never waits for the handler, so a process killed
/// with files open on a mount it serves itself can still exit (flush is a no-op here).
const FILE_OPEN: FopenFlags = FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_NOFLUSH);
/// Files live in memory twice (live and durable): refuse sizes that would only exhaust it.
const MAX_FILE: u64 = 4 << 30;

/// What a power cut keeps of the data written since the last sync of each file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Every unsynced byte and entry is lost.
    DropAll,
    /// Entries as `DropAll`; each 512-byte sector written since the last sync is persisted or
    /// lost independently (a deterministic function of seed, inode and sector): torn and
    /// reordered writes. A persisted sector past the durable end grows the file (zeros
    /// between).
    Torn { seed: u64 },
    /// Entries as `DropAll`; per file, a random prefix (in write order) of the sectors
    /// written since the last sync persists: a write torn at the tail.
    TornPrefix { seed: u64 },
}

/// Requests a [`Trigger`] can count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// rename; the suffix is matched against the new name.
    Rename,
    /// write; the suffix against any live name of the file.
    Write,
    /// fsync/fdatasync of a file; the suffix against any live name of the file.
    Fsync,
    /// fsync of a directory; the suffix against any live name of the directory.
    FsyncDir,
    /// read; the suffix against any live name of the file.
    Read,
    /// unlink (not rmdir); the suffix against the removed name.
    Unlink,
    /// create/mknod of a file; the suffix against the new name.
    Create,
    /// mkdir; the suffix against the new name.
    Mkdir,
}

/// Cut when the `nth` (1-based, counted from `arm`) matching request arrives from a process
/// other than the test process and not banned.
#[derive(Clone, Debug)]
pub struct Trigger {
    pub op: Op,
    pub nth: u64,
    pub name_suffix: Option<String>,
    pub mode: Cut,
}

/// Counters since the mount (requests that were refused count only in `refused`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub writes: u64,
    pub bytes_written: u64,
    pub reads: u64,
    pub fsyncs: u64,
    pub fsyncdirs: u64,
    pub renames: u64,
    pub creates: u64,
    pub unlinks: u64,
    pub cuts: u64,
    /// Requests answered EIO because their process was banned or already gone.
    pub refused: u64,
    /// fsyncs failed by `fail_fsync` (their dirty data dropped).
    pub sync_failures: u64,
}

/// A mounted powerfs. Dropping it unmounts (forcibly if something still uses it).
pub struct PowerFs {
    shared: Arc<Shared>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    /// Unmounts if this process dies without dropping us (see `spawn_guard`).
    guard: Option<Child>,
    /// Made by `mount_temp`: removed after the unmount.
    remove_dir: bool,
}

impl PowerFs {
    /// Mounts an empty powerfs on `mountpoint` (an existing empty directory); returns once
    /// the mount is live. Panics if it cannot mount.
    pub fn mount(mountpoint: &Path) -> PowerFs {
        let mountpoint = mountpoint
            .canonicalize()
            .unwrap_or_else(|e| panic!("powerfs: mountpoint {}: {e}", mountpoint.display()));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            fired: Condvar::new(),
        });
        let fs = Fs {
            shared: shared.clone(),
            own: std::process::id(),
            trace: std::env::var_os("POWERFS_TRACE").is_some(),
        };
        let mut cfg = Config::default();
        cfg.mount_options = vec![MountOption::FSName("powerfs".into()), MountOption::RW];
        // Children may run as any user; root is the only one here anyway.
        cfg.acl = SessionACL::All;
        // fuser's Session::new completes the INIT handshake before it returns, so the mount
        // answers requests as soon as this does.
        let session = fuser::spawn_mount(fs, &mountpoint, &cfg)
            .unwrap_or_else(|e| panic!("powerfs: mount on {}: {e}", mountpoint.display()));
        assert!(
            is_mounted(&mountpoint),
            "powerfs: {} not in /proc/mounts after mount",
            mountpoint.display()
        );
        let guard = spawn_guard(&mountpoint);
        PowerFs {
            shared,
            mountpoint,
            session: Some(session),
            guard,
            remove_dir: false,
        }
    }

    /// Mounts on a new directory under the temp dir, removed again at drop.
    pub fn mount_temp() -> PowerFs {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "powerfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("powerfs: temp mountpoint");
        let mut fs = PowerFs::mount(&dir);
        fs.remove_dir = true;
        fs
    }

    /// The mountpoint (canonical).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power cut (see the module doc). `pid` (a process id; a thread id is mapped to its
    /// process) is banned from now on; 0 bans nobody. Every open handle, the test process's
    /// too, is dead afterwards. Panics if asked to ban the test process itself.
    pub fn cut(&self, pid: u32, mode: Cut) {
        let own = std::process::id();
        let ban = if pid == 0 {
            None
        } else {
            let tgid = proc_tgid(pid).unwrap_or(pid);
            assert_ne!(tgid, own, "powerfs: cut would ban the test process itself");
            // A process that is already gone has nothing left to ban; banning its number
            // would hit whatever process gets it next.
            proc_start(tgid).map(|start| (tgid, start))
        };
        self.lock().power_cut(ban, mode);
    }

    /// Makes everything durable now (like `sync` before a clean shutdown).
    pub fn sync_all(&self) {
        let mut st = self.lock();
        let inos: Vec<u64> = st.inodes.keys().copied().collect();
        for ino in inos {
            match st.inodes.get(&ino).map(|n| n.is_dir()) {
                Some(true) => st.sync_dir(ino),
                Some(false) => st.sync_file(ino),
                None => {}
            }
        }
    }

    /// Arms a trigger (replacing any armed one) and clears `fired`.
    pub fn arm(&self, trigger: Trigger) {
        assert!(trigger.nth >= 1, "powerfs: Trigger::nth counts from 1");
        let mut st = self.lock();
        st.trigger = Some(Armed {
            t: trigger,
            seen: 0,
        });
        st.fired = None;
    }

    pub fn disarm(&self) {
        self.lock().trigger = None;
    }

    /// A writeback error: the `nth` fsync (1-based, from now; from a process other than
    /// the test process) of a file with a name ending in `name_suffix` fails with EIO,
    /// and the data it should have made durable is dropped from its dirty list, as Linux
    /// does after a failed writeback: the pages are marked clean, reads still see the new
    /// data, but no later sync writes it; a cut then loses it. `sync_failures` in
    /// `stats` counts it.
    pub fn fail_fsync(&self, nth: u64, name_suffix: Option<&str>) {
        assert!(nth >= 1, "powerfs: nth counts from 1");
        self.lock().fail_fsync = Some((nth, 0, name_suffix.map(String::from)));
    }

    /// The process the last armed trigger stopped and cut, if it fired.
    pub fn fired(&self) -> Option<u32> {
        self.lock().fired
    }

    /// Waits up to `timeout` for the armed trigger to fire.
    pub fn wait_fired(&self, timeout: Duration) -> Option<u32> {
        let st = self.lock();
        let (st, _) = self
            .shared
            .fired
            .wait_timeout_while(st, timeout, |st| st.fired.is_none())
            .unwrap_or_else(|e| e.into_inner());
        st.fired
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// Whether `pid`'s process is banned by a cut.
    pub fn is_banned(&self, pid: u32) -> bool {
        let tgid = proc_tgid(pid).unwrap_or(pid);
        self.lock().banned.contains_key(&tgid)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        // The guard goes first: once it is reaped it cannot unmount a later mount here.
        if let Some(mut guard) = self.guard.take() {
            let _ = guard.kill();
            let _ = guard.wait();
        }
        if let Some(session) = self.session.take() {
            let path = CString::new(self.mountpoint.as_os_str().as_bytes()).expect("path");
            // SAFETY: plain syscalls on a NUL-terminated path.
            unsafe {
                // A plain unmount fails (EBUSY) while a process still has a file or its cwd
                // here (say, a stopped child). MNT_FORCE then aborts the FUSE connection
                // (every request fails from now on, and the session thread's read ends),
                // and MNT_DETACH takes the mount out of the namespace at once.
                if libc::umount2(path.as_ptr(), 0) != 0 {
                    libc::umount2(path.as_ptr(), libc::MNT_FORCE);
                    if is_mounted(&self.mountpoint) {
                        libc::umount2(path.as_ptr(), libc::MNT_DETACH);
                    }
                }
            }
            // The session thread ends once the kernel closes the connection; fuser's own
            // unmount then finds nothing mounted. Never hang a test on it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while !session.guard.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if session.guard.is_finished() {
                let _ = session.umount_and_join();
            }
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir(&self.mountpoint);
        }
    }
}

/// A test binary killed outright (SIGKILL, a CI timeout, ^C) never runs Drop: the mount
/// would stay behind. Worse, the process may never finish dying: a thread killed while it
/// waited for a FUSE answer waits on (uninterruptibly) for the handler thread, which died
/// with it, and /dev/fuse is only closed once every thread is gone. So this bash, in its
/// own process group (^C to the test spares it), waits for EOF on a pipe only this process
/// holds (close-on-exec: children do not keep it) or for the process's main thread to be
/// a zombie, then unmounts with MNT_FORCE (which aborts the FUSE connection and so frees
/// any stuck thread) and MNT_DETACH. Drop kills it first.
fn spawn_guard(path: &Path) -> Option<Child> {
    const SCRIPT: &str = r#"
trap '' INT HUP TERM
while :; do
    read -t 1 x; rc=$?
    [ $rc -le 128 ] && break
    st=""; read -r st < /proc/$1/stat; st=${st##*) }; st=${st%% *}
    { [ -z "$st" ] || [ "$st" = Z ]; } && break
done
umount -f -l "$0" || fusermount3 -u -z "$0"
"#;
    Command::new("bash")
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .arg(std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

/// Whether `path` is a mountpoint in /proc/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    // Fields escape space, tab, newline and backslash as octal.
    let want = path
        .as_os_str()
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

// ---------------------------------------------------------------------------------------
// The model.

struct Shared {
    state: Mutex<State>,
    fired: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the mount: the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct FileData {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Byte ranges written since the last sync, in write order (a write that continues
    /// the previous one extends it). A sync copies only these: no whole-file copies.
    dirty: Vec<(u64, u64)>,
    /// The lowest size the file was truncated to since the last sync.
    shrunk_to: Option<u64>,
}

impl FileData {
    fn mark_dirty(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some(last) = self.dirty.last_mut() {
            if last.1 == start {
                last.1 = end;
                return;
            }
        }
        self.dirty.push((start, end));
    }

    fn sync(&mut self) {
        // Truncations first (the durable tail past the new size is gone), then the size,
        // then the written ranges. Every byte between the old durable end and the live end
        // is either written (dirty) or an extension (zeros, as resize fills).
        if let Some(n) = self.shrunk_to.take() {
            self.durable.truncate(n as usize);
        }
        self.durable.resize(self.live.len(), 0);
        let len = self.live.len();
        for &(s, e) in &self.dirty {
            let (s, e) = (s as usize, (e as usize).min(len));
            if s < e {
                self.durable[s..e].copy_from_slice(&self.live[s..e]);
            }
        }
        self.dirty.clear();
    }

    /// The torn part of a cut: copies the sectors that "made it" into `durable`.
    fn persist_torn(&mut self, ino: u64, mode: Cut) {
        let sectors: Vec<u64> = match mode {
            Cut::DropAll => return,
            Cut::Torn { seed } => {
                let all: BTreeSet<u64> = self.dirty_sectors().into_iter().collect();
                all.into_iter()
                    .filter(|&s| mix(seed, ino, s) & 1 == 1)
                    .collect()
            }
            Cut::TornPrefix { seed } => {
                let mut seen = HashSet::new();
                let ordered: Vec<u64> = self
                    .dirty_sectors()
                    .into_iter()
                    .filter(|s| seen.insert(*s))
                    .collect();
                let keep = mix(seed, ino, u64::MAX) % (ordered.len() as u64 + 1);
                ordered.into_iter().take(keep as usize).collect()
            }
        };
        let len = self.live.len();
        for s in sectors {
            let start = (s * SECTOR) as usize;
            let end = (start + SECTOR as usize).min(len);
            if start >= end {
                continue;
            }
            if self.durable.len() < end {
                self.durable.resize(end, 0);
            }
            self.durable[start..end].copy_from_slice(&self.live[start..end]);
        }
    }

    fn dirty_sectors(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for &(s, e) in &self.dirty {
            out.extend(s / SECTOR..e.div_ceil(SECTOR));
        }
        out
    }
}

struct DirData {
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    /// Live parent, for ".." and for refusing to move a directory into itself.
    parent: u64,
}

enum Body {
    File(FileData),
    Dir(DirData),
}

struct Inode {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Live and durable directory entries naming this inode, and open handles: an inode
    /// none of them reaches can never be seen again and is dropped.
    live_links: u32,
    durable_links: u32,
    open: u32,
}

impl Inode {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            body,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            live_links: 0,
            durable_links: 0,
            open: 0,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir(_))
    }

    fn kind(&self) -> FileType {
        if self.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (size, nlink) = match &self.body {
            Body::File(f) => (f.live.len() as u64, self.live_links),
            Body::Dir(d) => (d.live.len() as u64, 2),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind: self.kind(),
            perm: self.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

struct Handle {
    ino: u64,
    /// Directories: the listing served by readdir, taken at offset 0.
    listing: Vec<(u64, FileType, OsString)>,
}

struct Armed {
    t: Trigger,
    seen: u64,
}

struct State {
    inodes: HashMap<u64, Inode>,
    /// Never reused, so the kernel cannot confuse an inode lost in a cut with a new one.
    next_ino: u64,
    /// Cleared by a cut: a handle number unknown here is a dead handle.
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Banned process -> its start time (to tell it from a later process with its number).
    banned: HashMap<u32, u64>,
    /// Thread id -> process id. Cleared at every cut, so a reused thread id cannot carry a
    /// stale process into a new ban.
    tgids: HashMap<u32, u32>,
    trigger: Option<Armed>,
    fired: Option<u32>,
    /// `fail_fsync`: (nth, seen so far, name suffix).
    fail_fsync: Option<(u64, u64, Option<String>)>,
    stats: Stats,
}

type Res<T> = Result<T, Errno>;

impl State {
    fn new() -> State {
        let mut root = Inode::new(
            Body::Dir(DirData {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent: ROOT,
            }),
            0o755,
            0,
            0,
        );
        // The root is durable from the mount on.
        root.live_links = 1;
        root.durable_links = 1;
        State {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            banned: HashMap::new(),
            tgids: HashMap::new(),
            trigger: None,
            fired: None,
            fail_fsync: None,
            stats: Stats::default(),
        }
    }

    fn node(&self, ino: u64) -> Res<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Res<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Res<&DirData> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Res<&mut DirData> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Res<&mut FileData> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn attr(&self, ino: u64) -> Res<FileAttr> {
        Ok(self.node(ino)?.attr(ino))
    }

    /// A handle of this inode still alive (not from before a cut)?
    fn check_fh(&self, fh: u64, ino: u64) -> Res<()> {
        match self.handles.get(&fh) {
            Some(h) if h.ino == ino => Ok(()),
            _ => Err(Errno::EIO),
        }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Res<u64> {
        self.dir(parent)?
            .live
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn create_node(
        &mut self,
        parent: u64,
        name: &OsStr,
        dir: bool,
        perm: u16,
        req: &Request,
    ) -> Res<u64> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.dir(parent)?.live.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = if dir {
            Body::Dir(DirData {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
                parent,
            })
        } else {
            Body::File(FileData {
                live: Vec::new(),
                durable: Vec::new(),
                dirty: Vec::new(),
                shrunk_to: None,
            })
        };
        let mut node = Inode::new(body, perm, req.uid(), req.gid());
        node.live_links = 1;
        self.inodes.insert(ino, node);
        self.dir_mut(parent)?.live.insert(name.to_owned(), ino);
        self.touch(parent);
        self.stats.creates += 1;
        Ok(ino)
    }

    fn touch(&mut self, ino: u64) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            let now = SystemTime::now();
            n.mtime = now;
            n.ctime = now;
        }
    }

    fn open_handle(&mut self, ino: u64) -> Res<u64> {
        let listing = if self.node(ino)?.is_dir() {
            self.listing(ino)?
        } else {
            Vec::new()
        };
        self.node_mut(ino)?.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, listing });
        Ok(fh)
    }

    fn close_handle(&mut self, fh: u64) {
        if let Some(h) = self.handles.remove(&fh) {
            if let Some(n) = self.inodes.get_mut(&h.ino) {
                n.open = n.open.saturating_sub(1);
            }
            self.gc(h.ino);
        }
    }

    fn listing(&self, ino: u64) -> Res<Vec<(u64, FileType, OsString)>> {
        let d = self.dir(ino)?;
        let mut out = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (d.parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, &child) in &d.live {
            let kind = self
                .inodes
                .get(&child)
                .map_or(FileType::RegularFile, Inode::kind);
            out.push((child, kind, name.clone()));
        }
        Ok(out)
    }

    fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Res<u32> {
        self.check_fh(fh, ino)?;
        let end = offset + data.len() as u64;
        if end > MAX_FILE {
            return Err(Errno::EFBIG);
        }
        let f = self.file_mut(ino)?;
        if (f.live.len() as u64) < end {
            f.live.resize(end as usize, 0);
        }
        f.live[offset as usize..end as usize].copy_from_slice(data);
        f.mark_dirty(offset, end);
        self.touch(ino);
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        Ok(data.len() as u32)
    }

    fn set_size(&mut self, ino: u64, size: u64) -> Res<()> {
        if size > MAX_FILE {
            return Err(Errno::EFBIG);
        }
        let f = self.file_mut(ino)?;
        if size < f.live.len() as u64 {
            f.live.truncate(size as usize);
            f.shrunk_to = Some(f.shrunk_to.map_or(size, |s| s.min(size)));
            // Written ranges past the new end are gone, not torn-persistable.
            f.dirty.retain_mut(|r| {
                r.1 = r.1.min(size);
                r.0 < r.1
            });
        } else {
            // An extension is metadata (the size): live until a sync, zeros either way.
            f.live.resize(size as usize, 0);
        }
        self.touch(ino);
        Ok(())
    }

    /// Whether this fsync of `ino` is the one `fail_fsync` fails; if so its dirty data
    /// is dropped (never to be synced) and the failure counted.
    fn writeback_error(&mut self, ino: u64) -> bool {
        let Some((nth, seen, suffix)) = self.fail_fsync.clone() else {
            return false;
        };
        if suffix
            .as_ref()
            .is_some_and(|x| !self.has_name_ending(ino, x.as_bytes()))
        {
            return false;
        }
        if seen + 1 < nth {
            self.fail_fsync = Some((nth, seen + 1, suffix));
            return false;
        }
        self.fail_fsync = None;
        if let Ok(f) = self.file_mut(ino) {
            f.dirty.clear();
        }
        self.stats.sync_failures += 1;
        true
    }

    fn sync_file(&mut self, ino: u64) {
        if let Ok(f) = self.file_mut(ino) {
            f.sync();
        }
    }

    /// fsyncdir: the directory's durable entries := its live ones.
    fn sync_dir(&mut self, ino: u64) {
        let Ok(d) = self.dir_mut(ino) else { return };
        let old = std::mem::replace(&mut d.durable, d.live.clone());
        let new: Vec<u64> = d.durable.values().copied().collect();
        for c in new {
            if let Some(n) = self.inodes.get_mut(&c) {
                n.durable_links += 1;
            }
        }
        for &c in old.values() {
            if let Some(n) = self.inodes.get_mut(&c) {
                n.durable_links = n.durable_links.saturating_sub(1);
            }
            self.gc(c);
        }
    }

    /// Drops inodes that no live or durable entry and no handle reaches any more (they can
    /// never be seen again, even after a cut). Keeps memory flat under segment churn.
    fn gc(&mut self, ino: u64) {
        let mut work = vec![ino];
        while let Some(i) = work.pop() {
            if i == ROOT {
                continue;
            }
            let Some(n) = self.inodes.get(&i) else {
                continue;
            };
            if n.live_links > 0 || n.durable_links > 0 || n.open > 0 {
                continue;
            }
            if let Some(Inode {
                body: Body::Dir(d), ..
            }) = self.inodes.remove(&i)
            {
                for &c in d.durable.values() {
                    if let Some(n) = self.inodes.get_mut(&c) {
                        n.durable_links = n.durable_links.saturating_sub(1);
                    }
                    work.push(c);
                }
                for &c in d.live.values() {
                    if let Some(n) = self.inodes.get_mut(&c) {
                        n.live_links = n.live_links.saturating_sub(1);
                    }
                    work.push(c);
                }
            }
        }
    }

    fn unlink(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Res<()> {
        let ino = self.child(parent, name)?;
        let node = self.node(ino)?;
        match (want_dir, node.is_dir()) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            (true, true) if !self.dir(ino)?.live.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        self.dir_mut(parent)?.live.remove(name);
        self.touch(parent);
        let n = self.node_mut(ino)?;
        n.live_links = n.live_links.saturating_sub(1);
        self.gc(ino);
        self.stats.unlinks += 1;
        Ok(())
    }

    fn rename(&mut self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) -> Res<()> {
        if newname.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let ino = self.child(parent, name)?;
        self.dir(newparent)?;
        let is_dir = self.node(ino)?.is_dir();
        let target = self.dir(newparent)?.live.get(newname).copied();
        if target == Some(ino) {
            return Ok(());
        }
        if let Some(t) = target {
            match (is_dir, self.node(t)?.is_dir()) {
                (false, true) => return Err(Errno::EISDIR),
                (true, false) => return Err(Errno::ENOTDIR),
                (true, true) if !self.dir(t)?.live.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        if is_dir {
            // Not into itself or below it.
            let mut at = newparent;
            loop {
                if at == ino {
                    return Err(Errno::EINVAL);
                }
                if at == ROOT {
                    break;
                }
                at = self.dir(at)?.parent;
            }
        }
        self.dir_mut(parent)?.live.remove(name);
        self.dir_mut(newparent)?
            .live
            .insert(newname.to_owned(), ino);
        if is_dir {
            self.dir_mut(ino)?.parent = newparent;
        }
        self.touch(parent);
        self.touch(newparent);
        if let Some(t) = target {
            let n = self.node_mut(t)?;
            n.live_links = n.live_links.saturating_sub(1);
            self.gc(t);
        }
        self.stats.renames += 1;
        Ok(())
    }

    /// The power cut.
    fn power_cut(&mut self, ban: Option<(u32, u64)>, mode: Cut) {
        // Data and entries: live := durable (plus the torn sectors that made it).
        for (&ino, node) in self.inodes.iter_mut() {
            match &mut node.body {
                Body::File(f) => {
                    f.persist_torn(ino, mode);
                    f.live = f.durable.clone();
                    f.dirty.clear();
                    f.shrunk_to = None;
                }
                Body::Dir(d) => d.live = d.durable.clone(),
            }
            node.live_links = 0;
            node.durable_links = 0;
            node.open = 0;
        }
        // What the durable tree reaches from the root survives. A directory reached twice
        // (a rename whose two sides were synced apart) keeps its first entry only: the
        // tree stays a tree.
        let mut links: HashMap<u64, u32> = HashMap::from([(ROOT, 1)]);
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let entries: Vec<(OsString, u64)> = match &self.inodes[&dir].body {
                Body::Dir(d) => d.durable.iter().map(|(n, &i)| (n.clone(), i)).collect(),
                Body::File(_) => continue,
            };
            let mut drop_names = Vec::new();
            for (name, child) in entries {
                match self.inodes.get_mut(&child) {
                    None => drop_names.push(name),
                    Some(n) => match &mut n.body {
                        Body::Dir(d) => match links.entry(child) {
                            Entry::Occupied(_) => drop_names.push(name),
                            Entry::Vacant(v) => {
                                v.insert(1);
                                d.parent = dir;
                                queue.push_back(child);
                            }
                        },
                        Body::File(_) => *links.entry(child).or_insert(0) += 1,
                    },
                }
            }
            if let Some(Inode {
                body: Body::Dir(d), ..
            }) = self.inodes.get_mut(&dir)
            {
                for name in drop_names {
                    d.live.remove(&name);
                    d.durable.remove(&name);
                }
            }
        }
        self.inodes.retain(|ino, _| links.contains_key(ino));
        for (ino, n) in self.inodes.iter_mut() {
            n.live_links = links[ino];
            n.durable_links = links[ino];
        }
        self.handles.clear();
        self.tgids.clear();
        if let Some((tgid, start)) = ban {
            self.banned.insert(tgid, start);
        }
        self.stats.cuts += 1;
    }

    /// Whether `ino` has a live name ending with `suffix` (only asked while a trigger with
    /// a suffix is armed on a data operation).
    fn has_name_ending(&self, ino: u64, suffix: &[u8]) -> bool {
        self.inodes.values().any(|n| match &n.body {
            Body::Dir(d) => d
                .live
                .iter()
                .any(|(name, &i)| i == ino && name.as_bytes().ends_with(suffix)),
            Body::File(_) => false,
        })
    }
}

/// splitmix64 of the three: the torn-write coin of one sector.
fn mix(seed: u64, ino: u64, sector: u64) -> u64 {
    let mut z =
        seed ^ ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector.wrapping_mul(0xD1B5_4A32_D192_ED03);
    for _ in 0..2 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// The process (thread group) of thread `tid`, None if it is gone.
fn proc_tgid(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Start time (clock ticks since boot) of process `pid`, None if it is gone.
fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    // starttime is field 22; the rest starts at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// The FUSE side.

struct Fs {
    shared: Arc<Shared>,
    own: u32,
    trace: bool,
}

/// Where a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    /// pid 0: the kernel itself (or a process in another pid namespace).
    Kernel,
    /// The test process (the FUSE handler's own process).
    Own,
    Other(u32),
}

/// What a trigger's name suffix is matched against.
enum Target<'a> {
    Name(&'a OsStr),
    Ino(u64),
}

/// Admits the request or answers EIO (banned or dead process).
macro_rules! enter {
    ($self:ident, $req:ident, $reply:ident, $op:literal) => {
        match $self.enter($req, $op) {
            Some(x) => x,
            None => return $reply.error(Errno::EIO),
        }
    };
}

/// Counts the request for an armed trigger; if it fires, answers EIO.
macro_rules! fire {
    ($self:ident, $st:ident, $who:ident, $reply:ident, $op:expr, $target:expr) => {
        if $self.fire(&mut $st, $who, $op, $target) {
            return $reply.error(Errno::EIO);
        }
    };
}

impl Fs {
    /// Locks the state for a request, or None if its process is banned or gone (counted
    /// in `refused`). The ban check happens under the same lock as the operation, so a
    /// request is either wholly before a cut or judged by it.
    fn enter(&self, req: &Request, op: &str) -> Option<(MutexGuard<'_, State>, Who)> {
        let tid = req.pid();
        let mut st = self.shared.lock();
        let who = if tid == 0 {
            Who::Kernel
        } else {
            // Cached mappings are never of a banned process: the cache is cleared at each
            // cut (where bans happen) and a banned thread is not cached again, so a thread
            // id that a later process reuses cannot inherit a ban.
            let cached = st.tgids.get(&tid).copied();
            let Some(t) = cached.or_else(|| proc_tgid(tid)) else {
                // Its /proc entry is gone: a dead process's leftover request.
                st.stats.refused += 1;
                self.log(op, tid, "refused (dead)");
                return None;
            };
            if let Some(&start) = st.banned.get(&t) {
                // Still the banned process, not a later one that got its number?
                match proc_start(t) {
                    Some(now) if now != start => {
                        st.banned.remove(&t);
                    }
                    _ => {
                        st.stats.refused += 1;
                        self.log(op, tid, "refused (banned)");
                        return None;
                    }
                }
            }
            if cached.is_none() {
                if st.tgids.len() > 65_536 {
                    st.tgids.clear();
                }
                st.tgids.insert(tid, t);
            }
            if t == self.own {
                Who::Own
            } else {
                Who::Other(t)
            }
        };
        if self.trace {
            let comm = std::fs::read_to_string(format!("/proc/{tid}/comm")).unwrap_or_default();
            eprintln!("powerfs: {op} tid={tid} ({}) from {who:?}", comm.trim());
        }
        Some((st, who))
    }

    fn log(&self, op: &str, tid: u32, what: &str) {
        if self.trace {
            eprintln!("powerfs: {op} tid={tid} {what}");
        }
    }

    /// Counts a request for the armed trigger; on the nth: SIGSTOP its process, cut
    /// (without applying the request), record it. True if it fired.
    fn fire(&self, st: &mut State, who: Who, op: Op, target: Target<'_>) -> bool {
        let Who::Other(tgid) = who else { return false };
        let Some(armed) = &st.trigger else {
            return false;
        };
        if armed.t.op != op {
            return false;
        }
        if let Some(suffix) = &armed.t.name_suffix {
            let suffix = suffix.as_bytes();
            let hit = match target {
                Target::Name(n) => n.as_bytes().ends_with(suffix),
                Target::Ino(ino) => st.has_name_ending(ino, suffix),
            };
            if !hit {
                return false;
            }
        }
        let armed = st.trigger.as_mut().expect("armed");
        armed.seen += 1;
        if armed.seen < armed.t.nth {
            return false;
        }
        let mode = armed.t.mode;
        st.trigger = None;
        // Stopped first: it cannot issue anything more until the test decides; what it
        // has in flight is refused by the ban.
        // SAFETY: kill(2) with a pid and a signal number.
        unsafe {
            libc::kill(tgid as i32, libc::SIGSTOP);
        }
        let ban = proc_start(tgid).map(|s| (tgid, s));
        st.power_cut(ban, mode);
        st.fired = Some(tgid);
        self.shared.fired.notify_all();
        self.log("trigger", tgid, "fired: stopped and cut");
        true
    }
}

fn perm_of(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl fuser::Filesystem for Fs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (st, _) = enter!(self, req, reply, "lookup");
        match st.child(parent.0, name).and_then(|i| st.attr(i)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (st, _) = enter!(self, req, reply, "getattr");
        match st.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (mut st, _) = enter!(self, req, reply, "setattr");
        let res = (|| {
            let ino = ino.0;
            st.node(ino)?;
            if let Some(fh) = fh {
                st.check_fh(fh.0, ino)?;
            }
            if let Some(size) = size {
                st.set_size(ino, size)?;
            }
            let n = st.node_mut(ino)?;
            let at = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            if let Some(mode) = mode {
                n.perm = (mode & 0o7777) as u16;
            }
            if let Some(t) = atime {
                n.atime = at(t);
            }
            if let Some(t) = mtime {
                n.mtime = at(t);
            }
            n.ctime = SystemTime::now();
            st.attr(ino)
        })();
        match res {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let (mut st, who) = enter!(self, req, reply, "mknod");
        fire!(self, st, who, reply, Op::Create, Target::Name(name));
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match st
            .create_node(parent.0, name, false, perm_of(mode, umask), req)
            .and_then(|i| st.attr(i))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (mut st, who) = enter!(self, req, reply, "mkdir");
        fire!(self, st, who, reply, Op::Mkdir, Target::Name(name));
        match st
            .create_node(parent.0, name, true, perm_of(mode, umask), req)
            .and_then(|i| st.attr(i))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (mut st, who) = enter!(self, req, reply, "unlink");
        fire!(self, st, who, reply, Op::Unlink, Target::Name(name));
        match st.unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (mut st, _) = enter!(self, req, reply, "rmdir");
        match st.unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (mut st, who) = enter!(self, req, reply, "rename");
        fire!(self, st, who, reply, Op::Rename, Target::Name(newname));
        if !flags.is_empty() {
            // RENAME_NOREPLACE / EXCHANGE / WHITEOUT are not modelled.
            return reply.error(Errno::EINVAL);
        }
        match st.rename(parent.0, name, newparent.0, newname) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (mut st, _) = enter!(self, req, reply, "link");
        let res = (|| {
            if st.node(ino.0)?.is_dir() {
                return Err(Errno::EPERM);
            }
            if st.dir(newparent.0)?.live.contains_key(newname) {
                return Err(Errno::EEXIST);
            }
            st.dir_mut(newparent.0)?
                .live
                .insert(newname.to_owned(), ino.0);
            st.node_mut(ino.0)?.live_links += 1;
            st.touch(newparent.0);
            st.attr(ino.0)
        })();
        match res {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (mut st, _) = enter!(self, req, reply, "open");
        match st.node(ino.0).map(Inode::is_dir) {
            Ok(true) => reply.error(Errno::EISDIR),
            Ok(false) => match st.open_handle(ino.0) {
                Ok(fh) => reply.opened(FileHandle(fh), FILE_OPEN),
                Err(e) => reply.error(e),
            },
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (mut st, who) = enter!(self, req, reply, "create");
        fire!(self, st, who, reply, Op::Create, Target::Name(name));
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let res = st
            .create_node(parent.0, name, false, perm_of(mode, umask), req)
            .and_then(|ino| Ok((st.attr(ino)?, st.open_handle(ino)?)));
        match res {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FILE_OPEN),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (mut st, who) = enter!(self, req, reply, "read");
        fire!(self, st, who, reply, Op::Read, Target::Ino(ino.0));
        if let Err(e) = st.check_fh(fh.0, ino.0) {
            return reply.error(e);
        }
        st.stats.reads += 1;
        match st.file_mut(ino.0) {
            Ok(f) => {
                let len = f.live.len() as u64;
                let start = offset.min(len) as usize;
                let end = offset.saturating_add(size as u64).min(len) as usize;
                reply.data(&f.live[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (mut st, who) = enter!(self, req, reply, "write");
        fire!(self, st, who, reply, Op::Write, Target::Ino(ino.0));
        match st.write(ino.0, fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (st, _) = enter!(self, req, reply, "flush");
        match st.check_fh(fh.0, ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Always succeeds, banned or not: it changes nothing durable.
        self.shared.lock().close_handle(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let (mut st, who) = enter!(self, req, reply, "fsync");
        fire!(self, st, who, reply, Op::Fsync, Target::Ino(ino.0));
        if let Err(e) = st.check_fh(fh.0, ino.0) {
            return reply.error(e);
        }
        if matches!(who, Who::Other(_)) && st.writeback_error(ino.0) {
            self.log(
                "fsync",
                req.pid(),
                "failed: writeback error, dirty data dropped",
            );
            return reply.error(Errno::EIO);
        }
        st.sync_file(ino.0);
        st.stats.fsyncs += 1;
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (mut st, _) = enter!(self, req, reply, "opendir");
        match st
            .dir(ino.0)
            .map(|_| ())
            .and_then(|()| st.open_handle(ino.0))
        {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (mut st, _) = enter!(self, req, reply, "readdir");
        if let Err(e) = st.check_fh(fh.0, ino.0) {
            return reply.error(e);
        }
        if offset == 0 {
            // (Re)start: a fresh listing, so rewinddir sees changes.
            match st.listing(ino.0) {
                Ok(l) => st.handles.get_mut(&fh.0).expect("checked").listing = l,
                Err(e) => return reply.error(e),
            }
        }
        let h = &st.handles[&fh.0];
        for (i, (child, kind, name)) in h.listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.lock().close_handle(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let (mut st, who) = enter!(self, req, reply, "fsyncdir");
        fire!(self, st, who, reply, Op::FsyncDir, Target::Ino(ino.0));
        if let Err(e) = st.check_fh(fh.0, ino.0) {
            return reply.error(e);
        }
        st.sync_dir(ino.0);
        st.stats.fsyncdirs += 1;
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (_st, _) = enter!(self, req, reply, "statfs");
        // Plenty of space and inodes: 16 TiB in 4 KiB blocks.
        let blocks = 1u64 << 32;
        reply.statfs(blocks, blocks, blocks, 1 << 32, 1 << 32, 4096, 255, 4096);
    }

    fn access(&self, req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let (st, _) = enter!(self, req, reply, "access");
        match st.node(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let (mut st, _) = enter!(self, req, reply, "fallocate");
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let res = (|| {
            st.check_fh(fh.0, ino.0)?;
            let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
            if end > MAX_FILE {
                return Err(Errno::EFBIG);
            }
            let f = st.file_mut(ino.0)?;
            let old = f.live.len() as u64;
            if end > old {
                // Like a write of zeros past the end: live until a sync.
                f.live.resize(end as usize, 0);
                f.mark_dirty(old, end);
                st.touch(ino.0);
            }
            Ok(())
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
