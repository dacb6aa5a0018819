//! Tests of the power-loss model in tests/powerfs (not of ingestd): what survives a cut,
//! what a cut process can still do (nothing), triggers, and that mounts never outlive a
//! test. Real child processes (python3) where the ban matters; std::fs in the test process
//! otherwise (the test process is never banned: cuts ban a child, or nobody).
mod powerfs;

use powerfs::{is_mounted, Cut, Op, PowerFs, Trigger};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Helpers.

/// fsync(2) of a directory: FUSE fsyncdir, which makes its entries durable.
fn fsync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

/// Creates (or truncates) `path` with `data` and fsyncs the file (not its directory).
fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

/// Overwrites from offset 0 without any sync.
fn overwrite(path: &Path, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, 0).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Deterministic bytes that differ from offset to offset.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Polls `cond` until it holds (a condition, not a fixed sleep); generous for slow CI.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The state letter of /proc/<pid>/stat (R, S, D, T, Z...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(pid as i32, sig) },
        0,
        "kill({pid}, {sig})"
    );
}

/// A python3 child speaking lines on stdin/stdout; killed and reaped on drop.
struct Kid {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Kid {
    fn python(script: &str, args: &[&Path], cwd: Option<&Path>) -> Kid {
        let mut cmd = Command::new("python3");
        cmd.arg("-u").arg("-c").arg(script).args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().expect("python3");
        let out = BufReader::new(child.stdout.take().unwrap());
        Kid { child, out }
    }

    /// This test binary again, running only test `name` (with `env` set); `quiet`: its
    /// stderr (say, an expected panic) is not shown.
    fn this_binary(name: &str, env: (&str, &OsStr), quiet: bool) -> Kid {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]);
        cmd.env(env.0, env.1);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        if quiet {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().expect("test binary");
        let out = BufReader::new(child.stdout.take().unwrap());
        Kid { child, out }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next protocol line of a `this_binary` child: what follows "POWERFS:" (libtest
    /// prints its own lines, and may share one with ours).
    fn marked(&mut self) -> String {
        loop {
            let l = self.line();
            if let Some(i) = l.find("POWERFS:") {
                return l[i + "POWERFS:".len()..].to_string();
            }
        }
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).unwrap();
        assert!(!s.is_empty(), "child {} closed stdout", self.pid());
        s.trim_end().to_string()
    }

    fn send(&mut self, s: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{s}").unwrap();
        stdin.flush().unwrap();
    }

    fn stop(&self) {
        signal(self.pid(), libc::SIGSTOP);
        self.wait_stopped();
    }

    fn wait_stopped(&self) {
        let pid = self.pid();
        wait_until("child stopped", || proc_state(pid) == Some('T'));
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// 1. The basic model.

#[test]
fn unsynced_data_and_entries_are_lost_synced_ones_survive() {
    let fs = PowerFs::mount_temp();
    let root = fs.path();
    let big = pattern(300_001, 1);
    write_synced(&root.join("big"), &big);
    write_synced(&root.join("keep"), b"version one");
    fsync_dir(root);

    overwrite(&root.join("keep"), b"VERSION TWO, and longer");
    // Synced data, but its entry never reached the disk.
    write_synced(&root.join("new"), b"never dir-synced");
    assert_eq!(
        fs::read(root.join("keep")).unwrap(),
        b"VERSION TWO, and longer"
    );
    assert_eq!(names(root), ["big", "keep", "new"]);

    fs.cut(0, Cut::DropAll);

    assert_eq!(fs::read(root.join("keep")).unwrap(), b"version one");
    assert!(!root.join("new").exists());
    assert_eq!(
        fs::read(root.join("big")).unwrap(),
        big,
        "synced data byte for byte"
    );
    assert_eq!(names(root), ["big", "keep"]);
    let st = fs.stats();
    assert_eq!(st.cuts, 1);
    assert!(
        st.fsyncs >= 3 && st.fsyncdirs >= 1 && st.writes >= 4,
        "{st:?}"
    );
    assert!(st.bytes_written >= 300_001, "{st:?}");
}

#[test]
fn truncate_and_extend_are_live_until_a_sync() {
    let fs = PowerFs::mount_temp();
    let f = fs.path().join("f");
    let data = pattern(10_000, 2);
    write_synced(&f, &data);
    fsync_dir(fs.path());

    // Shrink, then grow with a write: neither synced.
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(100).unwrap();
    h.write_all_at(b"tail", 20_000).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().len(), 20_004);
    drop(h);
    fs.cut(0, Cut::DropAll);
    assert_eq!(fs::read(&f).unwrap(), data);

    // The same, synced: the old bytes past the shrink point must not come back.
    let h = OpenOptions::new().write(true).open(&f).unwrap();
    h.set_len(100).unwrap();
    h.write_all_at(b"tail", 20_000).unwrap();
    h.sync_data().unwrap();
    drop(h);
    fs.cut(0, Cut::DropAll);
    let got = fs::read(&f).unwrap();
    assert_eq!(got.len(), 20_004);
    assert_eq!(&got[..100], &data[..100]);
    assert!(got[100..20_000].iter().all(|&b| b == 0));
    assert_eq!(&got[20_000..], b"tail");
}

#[test]
fn unlink_and_rmdir_are_live_until_fsyncdir() {
    let fs = PowerFs::mount_temp();
    let root = fs.path();
    for name in ["gone", "back"] {
        write_synced(&root.join(name), name.as_bytes());
    }
    fs::create_dir(root.join("dir")).unwrap();
    fsync_dir(root);

    // Open and unlinked: still readable through its handle until the cut.
    let open = File::open(root.join("back")).unwrap();
    fs::remove_file(root.join("back")).unwrap();
    fs::remove_dir(root.join("dir")).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(open.read_at(&mut buf, 0).unwrap(), 4);
    assert_eq!(&buf, b"back");
    assert_eq!(names(root), ["gone"]);
    fs.cut(0, Cut::DropAll);
    assert!(open.read_at(&mut buf, 0).is_err(), "handles die at the cut");
    drop(open);
    assert_eq!(
        names(root),
        ["back", "dir", "gone"],
        "unsynced removals undone"
    );
    assert_eq!(fs::read(root.join("back")).unwrap(), b"back");

    fs::remove_file(root.join("gone")).unwrap();
    fs::remove_dir(root.join("dir")).unwrap();
    fsync_dir(root);
    fs.cut(0, Cut::DropAll);
    assert_eq!(names(root), ["back"]);
}

#[test]
fn fallocate_extends_with_zeros_until_a_sync() {
    let fs = PowerFs::mount_temp();
    let p = fs.path().join("pre");
    write_synced(&p, b"head");
    fsync_dir(fs.path());
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: fallocate(2) on an open fd.
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 1 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    // SAFETY: as above.
    let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 2 << 20) };
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EOPNOTSUPP)
    );
    drop(f);
    fs.cut(0, Cut::DropAll);
    assert_eq!(fs::read(&p).unwrap(), b"head");

    let f = OpenOptions::new().write(true).open(&p).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 1 << 20) }, 0);
    f.sync_data().unwrap();
    drop(f);
    fs.cut(0, Cut::DropAll);
    let got = fs::read(&p).unwrap();
    assert_eq!(got.len(), 1 << 20);
    assert_eq!(&got[..4], b"head");
    assert!(got[4..].iter().all(|&b| b == 0));
}

#[test]
fn sync_all_makes_everything_durable() {
    let fs = PowerFs::mount_temp();
    let d = fs.path().join("d");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("f"), b"never synced by anyone").unwrap();
    fs.sync_all();
    fs.cut(0, Cut::DropAll);
    assert_eq!(fs::read(d.join("f")).unwrap(), b"never synced by anyone");
}

// ---------------------------------------------------------------------------------------
// 2. A sync through any handle.

#[test]
fn fdatasync_through_a_second_fd_makes_the_first_fds_writes_durable() {
    let fs = PowerFs::mount_temp();
    let (f, g) = (fs.path().join("f"), fs.path().join("g"));
    write_synced(&f, b"");
    write_synced(&g, b"");
    fsync_dir(fs.path());

    let a = OpenOptions::new().write(true).open(&f).unwrap();
    let b = File::open(&f).unwrap();
    a.write_all_at(b"written through a", 0).unwrap();
    b.sync_data().unwrap();
    // Control: a file whose writes nobody syncs.
    let c = OpenOptions::new().write(true).open(&g).unwrap();
    c.write_all_at(b"never synced", 0).unwrap();
    drop((a, b, c));

    fs.cut(0, Cut::DropAll);
    assert_eq!(fs::read(&f).unwrap(), b"written through a");
    assert_eq!(fs::read(&g).unwrap(), b"");
}

// ---------------------------------------------------------------------------------------
// 3. Rename over a file.

#[test]
fn rename_over_survives_only_with_fsyncdir() {
    let fs = PowerFs::mount_temp();
    let root = fs.path();
    for (dir, sync) in [("synced", true), ("unsynced", false)] {
        let d = root.join(dir);
        fs::create_dir(&d).unwrap();
        fsync_dir(root);
        write_synced(&d.join("a"), b"old");
        write_synced(&d.join("b.tmp"), b"new");
        fsync_dir(&d);
        fs::rename(d.join("b.tmp"), d.join("a")).unwrap();
        if sync {
            fsync_dir(&d);
        }
        assert_eq!(names(&d), ["a"]);
    }
    assert_eq!(fs.stats().renames, 2);

    fs.cut(0, Cut::DropAll);

    let d = root.join("synced");
    assert_eq!(names(&d), ["a"]);
    assert_eq!(fs::read(d.join("a")).unwrap(), b"new");
    let d = root.join("unsynced");
    assert_eq!(names(&d), ["a", "b.tmp"]);
    assert_eq!(fs::read(d.join("a")).unwrap(), b"old");
    assert_eq!(fs::read(d.join("b.tmp")).unwrap(), b"new");
}

#[test]
fn rename_between_directories_persists_each_side_with_its_own_fsyncdir() {
    let fs = PowerFs::mount_temp();
    let d = |n: &str| fs.path().join(n);
    for n in ["a1", "b1", "a2", "b2"] {
        fs::create_dir(d(n)).unwrap();
    }
    fsync_dir(fs.path());
    write_synced(&d("a1/x"), b"x");
    fsync_dir(&d("a1"));
    write_synced(&d("a2/y"), b"y");
    fsync_dir(&d("a2"));

    // x: only the target side synced -> under both names after the cut (one inode).
    fs::rename(d("a1/x"), d("b1/x")).unwrap();
    fsync_dir(&d("b1"));
    // y: only the source side synced -> under neither.
    fs::rename(d("a2/y"), d("b2/y")).unwrap();
    fsync_dir(&d("a2"));

    fs.cut(0, Cut::DropAll);
    assert_eq!(names(&d("a1")), ["x"]);
    assert_eq!(names(&d("b1")), ["x"]);
    assert_eq!(fs::read(d("b1/x")).unwrap(), b"x");
    assert!(names(&d("a2")).is_empty());
    assert!(names(&d("b2")).is_empty());
}

// ---------------------------------------------------------------------------------------
// 4. Directories.

#[test]
fn mkdir_without_parent_fsyncdir_vanishes_with_everything_in_it() {
    let fs = PowerFs::mount_temp();
    let root = fs.path();
    let kept = root.join("kept");
    fs::create_dir(&kept).unwrap();
    fsync_dir(root);
    write_synced(&kept.join("f"), b"kept");
    fsync_dir(&kept);

    // The root is never fsynced after this mkdir.
    let lost = root.join("lost");
    fs::create_dir(&lost).unwrap();
    write_synced(&lost.join("f"), b"synced inside");
    fs::create_dir(lost.join("sub")).unwrap();
    fsync_dir(&lost);
    write_synced(&lost.join("sub/g"), b"deeper");
    fsync_dir(&lost.join("sub"));
    assert_eq!(names(root), ["kept", "lost"]);

    fs.cut(0, Cut::DropAll);
    assert_eq!(names(root), ["kept"]);
    assert!(!lost.exists());
    assert_eq!(fs::read(kept.join("f")).unwrap(), b"kept");
}

// ---------------------------------------------------------------------------------------
// 5. Torn writes.

/// 64 KiB of synced 'A' overwritten by unsynced 'B'; a durable empty file given 64 KiB of
/// unsynced 'C'. Returns both after a cut with `mode`, on a fresh mount each time.
fn torn_scenario(mode: Cut) -> (Vec<u8>, Vec<u8>) {
    let fs = PowerFs::mount_temp();
    let (f, g) = (fs.path().join("f"), fs.path().join("g"));
    write_synced(&f, &[b'A'; 65_536]);
    write_synced(&g, b"");
    fsync_dir(fs.path());
    overwrite(&f, &[b'B'; 65_536]);
    overwrite(&g, &[b'C'; 65_536]);
    fs.cut(0, mode);
    (fs::read(&f).unwrap(), fs::read(&g).unwrap())
}

#[test]
fn torn_cut_mixes_old_and_new_sectors_reproducibly() {
    let (f1, g1) = torn_scenario(Cut::Torn { seed: 42 });
    assert_eq!(f1.len(), 65_536);
    let mut new = 0;
    for s in f1.chunks(512) {
        assert!(
            s.iter().all(|&b| b == b'A') || s.iter().all(|&b| b == b'B'),
            "a sector is all old or all new"
        );
        new += usize::from(s[0] == b'B');
    }
    assert!(0 < new && new < 128, "{new} of 128 sectors new");
    println!("seed 42: {new} of 128 sectors persisted");

    // The unsynced append: the size covers the last persisted sector, zeros between.
    assert!(
        g1.len() % 512 == 0 && g1.len() <= 65_536,
        "len {}",
        g1.len()
    );
    for s in g1.chunks(512) {
        assert!(s.iter().all(|&b| b == b'C') || s.iter().all(|&b| b == 0));
    }
    assert!(g1.is_empty() || g1[g1.len() - 1] == b'C');

    let (f2, g2) = torn_scenario(Cut::Torn { seed: 42 });
    assert_eq!((&f1, &g1), (&f2, &g2), "same seed, same result");
    let (f3, _) = torn_scenario(Cut::Torn { seed: 7 });
    assert_ne!(f1, f3, "another seed, another pattern");

    let (f4, g4) = torn_scenario(Cut::DropAll);
    assert_eq!((f4, g4), (vec![b'A'; 65_536], vec![]));
}

#[test]
fn torn_prefix_cut_keeps_a_prefix_of_the_writes() {
    let fs = PowerFs::mount_temp();
    let f = fs.path().join("f");
    write_synced(&f, &[b'A'; 65_536]);
    fsync_dir(fs.path());
    // Written back to front in 4 KiB writes: write order is not offset order. Within a
    // write, sectors go in offset order (a write torn at its tail).
    let order: Vec<usize> = (0..16).rev().flat_map(|w| w * 8..w * 8 + 8).collect();
    let mut kept = Vec::new();
    for seed in 1..=8 {
        // Back to all old, durably (each cut's result is durable).
        overwrite(&f, &[b'A'; 65_536]);
        File::open(&f).unwrap().sync_data().unwrap();
        let h = OpenOptions::new().write(true).open(&f).unwrap();
        for w in (0..16u64).rev() {
            h.write_all_at(&[b'B'; 4096], w * 4096).unwrap();
        }
        drop(h);
        fs.cut(0, Cut::TornPrefix { seed });
        let got = fs::read(&f).unwrap();
        assert_eq!(got.len(), 65_536);
        let new: Vec<bool> = got
            .chunks(512)
            .map(|s| {
                assert!(
                    s.iter().all(|&b| b == s[0]),
                    "a sector is all old or all new"
                );
                s[0] == b'B'
            })
            .collect();
        let k = new.iter().filter(|&&b| b).count();
        for (i, &sector) in order.iter().enumerate() {
            assert_eq!(
                new[sector],
                i < k,
                "seed {seed}: the first {k} sectors written, no others"
            );
        }
        kept.push(k);
    }
    println!("TornPrefix sectors kept for seeds 1..=8: {kept:?}");
    assert!(kept.iter().any(|&k| k != kept[0]), "seeds differ: {kept:?}");
}

// ---------------------------------------------------------------------------------------
// 6. The cut process is banned.

const HOLDER: &str = r#"
import os, sys
p = sys.argv[1]
fd = os.open(p, os.O_RDWR)
os.pwrite(fd, b"BBBBBBBB", 0)
print("written", flush=True)
sys.stdin.readline()
res = []
for name, op in [("write", lambda: os.pwrite(fd, b"CCCCCCCC", 0)),
                 ("fsync", lambda: os.fsync(fd)),
                 ("create", lambda: os.open(p + ".new", os.O_CREAT | os.O_WRONLY, 0o644))]:
    try:
        op()
        res.append(name + ":ok")
    except OSError as e:
        res.append(name + ":" + str(e.errno))
print(" ".join(res), flush=True)
"#;

const FRESH: &str = r#"
import os, sys
p = sys.argv[1]
fd = os.open(p, os.O_RDWR)
os.pwrite(fd, b"DDDD", 0)
os.fsync(fd)
print(os.pread(fd, 100, 0).decode(), flush=True)
"#;

#[test]
fn a_cut_process_gets_eio_and_changes_nothing_a_new_one_works() {
    let fs = PowerFs::mount_temp();
    let f = fs.path().join("f");
    write_synced(&f, b"AAAAAAAA");
    fsync_dir(fs.path());

    let mut kid = Kid::python(HOLDER, &[&f], None);
    assert_eq!(kid.line(), "written");
    assert_eq!(fs::read(&f).unwrap(), b"BBBBBBBB");
    kid.stop();
    fs.cut(kid.pid(), Cut::DropAll);
    assert!(fs.is_banned(kid.pid()));
    assert_eq!(fs::read(&f).unwrap(), b"AAAAAAAA");

    signal(kid.pid(), libc::SIGCONT);
    kid.send("go");
    assert_eq!(kid.line(), "write:5 fsync:5 create:5");
    assert_eq!(
        fs::read(&f).unwrap(),
        b"AAAAAAAA",
        "durable state untouched"
    );
    assert!(!fs.path().join("f.new").exists());
    assert!(fs.stats().refused >= 3, "{:?}", fs.stats());
    let status = kid.child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    let mut fresh = Kid::python(FRESH, &[&f], None);
    assert_eq!(fresh.line(), "DDDDAAAA");
    assert!(fresh.child.wait().unwrap().success());
    fs.cut(0, Cut::DropAll);
    assert_eq!(
        fs::read(&f).unwrap(),
        b"DDDDAAAA",
        "the new process's sync is durable"
    );
}

// io_uring (Glommio, as ingestd): DMA writes and reads arrive from the submitting thread,
// opens and fdatasyncs from `iou-wrk-*` kernel threads of the process. Both kinds are
// mapped to the process, so both are banned after a cut.

/// Not a test by itself: the child process of the next test (does nothing unless
/// POWERFS_IOURING_CHILD names a file).
#[test]
fn io_uring_child() {
    let Some(path) = std::env::var_os("POWERFS_IOURING_CHILD") else {
        return;
    };
    let path = PathBuf::from(path);
    let errno = |r: Result<usize, glommio::GlommioError<()>>| match r {
        Ok(_) => "ok".to_string(),
        Err(glommio::GlommioError::IoError(e))
        | Err(glommio::GlommioError::EnhancedIoError { source: e, .. }) => {
            e.raw_os_error().unwrap_or(-1).to_string()
        }
        Err(e) => format!("{e}"),
    };
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let f = glommio::io::OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&path)
                .await
                .expect("O_DIRECT open");
            let block = |byte: u8| {
                let mut b = f.alloc_dma_buffer(4096);
                b.as_bytes_mut().fill(byte);
                b
            };
            f.write_at(block(b'B'), 0).await.unwrap();
            f.fdatasync().await.unwrap();
            let back = f.read_at_aligned(0, 4096).await.unwrap();
            assert!(back.iter().all(|&b| b == b'B'));
            f.write_at(block(b'X'), 4096).await.unwrap();
            println!("POWERFS:written");
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).unwrap();
            let w = errno(f.write_at(block(b'C'), 0).await);
            let s = errno(f.fdatasync().await.map(|()| 0));
            println!("POWERFS:write:{w} fsync:{s}");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn io_uring_requests_of_a_cut_process_are_refused() {
    let fs = PowerFs::mount_temp();
    let f = fs.path().join("seg");
    write_synced(&f, &[b'A'; 4096]);
    fsync_dir(fs.path());

    let mut kid = Kid::this_binary(
        "io_uring_child",
        ("POWERFS_IOURING_CHILD", f.as_os_str()),
        false,
    );
    assert_eq!(kid.marked(), "written");
    let mut want = vec![b'B'; 4096];
    want.extend([b'X'; 4096]);
    assert_eq!(
        fs::read(&f).unwrap(),
        want,
        "io_uring writes reach the model"
    );
    kid.stop();
    fs.cut(kid.pid(), Cut::DropAll);
    assert_eq!(
        fs::read(&f).unwrap(),
        [b'B'; 4096],
        "the io_uring fdatasync landed"
    );

    signal(kid.pid(), libc::SIGCONT);
    kid.send("go");
    assert_eq!(kid.marked(), "write:5 fsync:5");
    assert_eq!(fs::read(&f).unwrap(), [b'B'; 4096]);
    assert!(kid.child.wait().unwrap().success());
}

// ---------------------------------------------------------------------------------------
// 7. Triggers.

const RENAMER: &str = r#"
import os, sys
d = sys.argv[1]
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
def put(name, data):
    fd = os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.fsync(dfd)
print("ready", flush=True)
sys.stdin.readline()
for i in range(10):
    put("%d.idx.tmp" % i, b"index %d" % i)
    os.rename(os.path.join(d, "%d.idx.tmp" % i), os.path.join(d, "%d.idx" % i))
    put("%d.tmp" % i, b"segment %d" % i)
    os.rename(os.path.join(d, "%d.tmp" % i), os.path.join(d, "%d.seg" % i))
    os.fsync(dfd)
print("done", flush=True)
"#;

#[test]
fn trigger_stops_and_cuts_at_the_third_seg_rename() {
    let fs = PowerFs::mount_temp();
    let root = fs.path();
    let mut kid = Kid::python(RENAMER, &[root], None);
    assert_eq!(kid.line(), "ready");

    fs.arm(Trigger {
        op: Op::Rename,
        nth: 3,
        name_suffix: Some(".seg".into()),
        mode: Cut::DropAll,
    });
    // The test process's own renames never count.
    for name in ["own1", "own2", "own3"] {
        write_synced(&root.join(format!("{name}.tmp")), name.as_bytes());
        fs::rename(
            root.join(format!("{name}.tmp")),
            root.join(format!("{name}.seg")),
        )
        .unwrap();
    }
    fsync_dir(root);
    assert_eq!(fs.fired(), None);

    kid.send("go");
    assert_eq!(fs.wait_fired(Duration::from_secs(60)), Some(kid.pid()));
    kid.wait_stopped();
    assert_eq!(fs.fired(), Some(kid.pid()));
    assert!(fs.is_banned(kid.pid()));

    // Everything up to the 3rd .seg rename was synced; that rename never happened.
    let mut want = vec!["0.idx", "0.seg", "1.idx", "1.seg", "2.idx", "2.tmp"];
    want.extend(["own1.seg", "own2.seg", "own3.seg"]);
    assert_eq!(names(root), want);
    assert_eq!(fs::read(root.join("1.seg")).unwrap(), b"segment 1");
    assert_eq!(fs::read(root.join("2.tmp")).unwrap(), b"segment 2");
    let st = fs.stats();
    assert_eq!(st.cuts, 1);
    // 3 own + 3 idx + 2 seg renames of the child applied; the fired one was not.
    assert_eq!(st.renames, 3 + 3 + 2, "{st:?}");
    drop(kid);

    // A trigger fires once: the next process renames freely.
    let sub = root.join("again");
    fs::create_dir(&sub).unwrap();
    let mut again = Kid::python(RENAMER, &[&sub], None);
    assert_eq!(again.line(), "ready");
    again.send("go");
    assert_eq!(again.line(), "done");
    assert_eq!(fs.stats().cuts, 1);
    assert_eq!(names(&sub).len(), 20);
}

#[test]
fn trigger_on_fsync_by_name_suffix() {
    let fs = PowerFs::mount_temp();
    let root = fs.path();
    let script = r#"
import os, sys
d = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
for name in ["a.log", "b.seg", "c.log", "d.seg"]:
    fd = os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, name.encode())
    os.fsync(fd)
print("done", flush=True)
"#;
    let mut kid = Kid::python(script, &[root], None);
    assert_eq!(kid.line(), "ready");
    fs.arm(Trigger {
        op: Op::Fsync,
        nth: 2,
        name_suffix: Some(".seg".into()),
        mode: Cut::DropAll,
    });
    kid.send("go");
    assert_eq!(fs.wait_fired(Duration::from_secs(60)), Some(kid.pid()));
    kid.wait_stopped();
    // Nothing was dir-synced: all gone.
    assert!(names(root).is_empty());
    assert_eq!(
        fs.stats().fsyncs,
        3,
        "a.log, b.seg, c.log synced; d.seg's cut"
    );
}

#[test]
fn a_failed_fsync_drops_its_data_like_a_writeback_error() {
    // Linux after a failed writeback: the sync answers EIO, the pages are marked clean
    // (reads still see the new bytes), a later sync of the same file succeeds without
    // writing them, and a power cut loses them.
    let fs = PowerFs::mount_temp();
    let root = fs.path();
    let f = root.join("w.seg");
    write_synced(&f, &[b'o'; 8192]);
    fsync_dir(root);
    let script = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"A" * 4096, 0)
try:
    os.fsync(fd)
    print("synced", flush=True)
except OSError as e:
    print("errno", e.errno, flush=True)
os.pwrite(fd, b"B" * 4096, 4096)
os.fsync(fd)
print("second synced", flush=True)
sys.stdin.readline()
"#;
    fs.fail_fsync(1, Some(".seg"));
    let mut kid = Kid::python(script, &[&f], None);
    assert_eq!(kid.line(), "errno 5");
    assert_eq!(kid.line(), "second synced");
    let live = std::fs::read(&f).unwrap();
    assert_eq!(
        (&live[..4096], &live[4096..]),
        (&[b'A'; 4096][..], &[b'B'; 4096][..])
    );
    kid.stop();
    fs.cut(kid.pid(), Cut::DropAll);
    let after = std::fs::read(&f).unwrap();
    assert_eq!(
        &after[..4096],
        &[b'o'; 4096][..],
        "the failed sync's data survived"
    );
    assert_eq!(
        &after[4096..],
        &[b'B'; 4096][..],
        "the later sync's data was lost"
    );
    assert_eq!(fs.stats().sync_failures, 1);
}

// ---------------------------------------------------------------------------------------
// 8. Mounts never outlive a test.

/// Not a test by itself: the child process of the next test (does nothing unless
/// POWERFS_MOUNT_CHILD is "panic" or "hang").
#[test]
fn mount_child() {
    let Ok(mode) = std::env::var("POWERFS_MOUNT_CHILD") else {
        return;
    };
    let fs = PowerFs::mount_temp();
    let _open = File::create(fs.path().join("held")).unwrap();
    println!("POWERFS:{}", fs.path().display());
    if mode == "panic" {
        panic!("deliberate panic with a powerfs mounted");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap(); // until killed
}

#[test]
fn drop_unmounts_also_on_panic_when_busy_and_when_killed() {
    let path = {
        let fs = PowerFs::mount_temp();
        fs::write(fs.path().join("f"), b"x").unwrap();
        assert!(is_mounted(fs.path()));
        fs.path().to_path_buf()
    };
    assert!(!is_mounted(&path), "dropped: unmounted");
    assert!(!path.exists(), "temp mountpoint removed");

    // In-process: unwinding drops the mount.
    let seen: Arc<Mutex<Option<PathBuf>>> = Arc::default();
    let seen2 = seen.clone();
    let r = std::thread::spawn(move || {
        let fs = PowerFs::mount_temp();
        *seen2.lock().unwrap() = Some(fs.path().to_path_buf());
        let _open = File::create(fs.path().join("open while panicking")).unwrap();
        std::panic::resume_unwind(Box::new("deliberate unwind with a powerfs mounted"));
    })
    .join();
    assert!(r.is_err());
    let path = seen.lock().unwrap().clone().unwrap();
    assert!(!is_mounted(&path), "unmounted while unwinding");

    // A failing (panicking) test in another process.
    let mut kid = Kid::this_binary(
        "mount_child",
        ("POWERFS_MOUNT_CHILD", "panic".as_ref()),
        true,
    );
    let path = PathBuf::from(kid.marked());
    assert!(
        !kid.child.wait().unwrap().success(),
        "the child test failed"
    );
    assert!(!is_mounted(&path), "a failed test leaves no mount");
    assert!(!path.exists());

    // A test process killed outright: its guard unmounts.
    let mut kid = Kid::this_binary(
        "mount_child",
        ("POWERFS_MOUNT_CHILD", "hang".as_ref()),
        true,
    );
    let path = PathBuf::from(kid.marked());
    assert!(is_mounted(&path));
    signal(kid.pid(), libc::SIGKILL);
    kid.child.wait().unwrap();
    wait_until("the guard's unmount", || !is_mounted(&path));
    fs::remove_dir(&path).unwrap();

    // Busy: a stopped child with a file open and its cwd inside the mount.
    let fs = PowerFs::mount_temp();
    let path = fs.path().to_path_buf();
    let script =
        "import sys\nf = open('held', 'w')\nprint('ready', flush=True)\nsys.stdin.readline()\n";
    let mut kid = Kid::python(script, &[], Some(&path));
    assert_eq!(kid.line(), "ready");
    kid.stop();
    drop(fs);
    assert!(!is_mounted(&path), "unmounted although busy");
    drop(kid);
    assert!(!path.exists());
}

// ---------------------------------------------------------------------------------------
// 9. Throughput sanity (not a timing assertion).

#[test]
fn two_thousand_pwrite_fdatasync_pairs() {
    let fs = PowerFs::mount_temp();
    let p = fs.path().join("seg");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    fsync_dir(fs.path());
    let before = fs.stats();
    let buf = [7u8; 4096];
    let t = Instant::now();
    for i in 0..2000u64 {
        f.write_all_at(&buf, i * 4096).unwrap();
        f.sync_data().unwrap();
    }
    let took = t.elapsed();
    println!(
        "2000 x (4 KiB pwrite + fdatasync): {took:?} ({:.1} us per pair)",
        took.as_secs_f64() * 1e6 / 2000.0
    );
    let st = fs.stats();
    assert_eq!(st.writes - before.writes, 2000);
    assert_eq!(st.fsyncs - before.fsyncs, 2000);
    assert_eq!(st.bytes_written - before.bytes_written, 2000 * 4096);
    drop(f);
    fs.cut(0, Cut::DropAll);
    assert_eq!(fs::metadata(&p).unwrap().len(), 2000 * 4096);
}
