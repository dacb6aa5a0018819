//! The on-disk format of a spool segment, pure (no files): commit batches, each starting
//! at a block boundary, each a header with CRC32C checksums followed by its records.
//!
//! A segment is a preallocated file (zeros, or a recycled older segment): a batch belongs
//! to the segment only if its header names the segment's base sequence, so stale bytes of
//! an earlier life end the log like zeros do. Every batch is padded to `BLOCK`, so a block
//! that was synced is never written again.

use crate::kafka::lane::{HeaderMeta, RecordBatch, RecordMeta};

/// Write unit and alignment of every batch (O_DIRECT needs at most this on Linux disks).
pub const BLOCK: usize = 4096;
const MAGIC: [u8; 4] = *b"IGSP";
pub const VERSION: u8 = 1;
pub const HEADER: usize = 40;
/// Fixed part of one record in a batch (see `push_record`).
const RECORD_FIXED: usize = 16;
const NO_KEY: u32 = u32::MAX;

/// Header name of the stable record id (`<executor>-<sequence>`) that every record from a
/// spool carries, so consumers can drop the duplicates that replay may produce.
pub const ID_HEADER: &str = "ingestd-id";

pub fn padded(len: usize) -> usize {
    len.div_ceil(BLOCK) * BLOCK
}

/// Appends one record to a batch's payload.
pub fn push_record<'h>(
    payload: &mut Vec<u8>,
    topic: &[u8],
    key: Option<&[u8]>,
    value: &[u8],
    partition: i32,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
) {
    let count = headers.clone().count();
    payload.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    payload.extend_from_slice(&key.map_or(NO_KEY, |k| k.len() as u32).to_le_bytes());
    payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
    payload.extend_from_slice(&partition.to_le_bytes());
    payload.extend_from_slice(&(count as u16).to_le_bytes());
    payload.extend_from_slice(topic);
    payload.extend_from_slice(key.unwrap_or(&[]));
    payload.extend_from_slice(value);
    for (n, v) in headers {
        payload.extend_from_slice(&(n.len() as u16).to_le_bytes());
        payload.extend_from_slice(&(v.len() as u32).to_le_bytes());
        payload.extend_from_slice(n);
        payload.extend_from_slice(v);
    }
}

/// Bytes `push_record` adds for a record.
pub fn record_len(
    topic: usize,
    key: usize,
    value: usize,
    headers: usize,
    nheaders: usize,
) -> usize {
    RECORD_FIXED + topic + key + value + headers + 6 * nheaders
}

/// The header of a batch of `count` records starting at `first_seq`.
pub fn header(base: u64, first_seq: u64, count: u32, payload: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC);
    h[4] = VERSION;
    h[8..16].copy_from_slice(&base.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    h[24..28].copy_from_slice(&count.to_le_bytes());
    h[28..32].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[32..36].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let crc = crc32c::crc32c(&h[..36]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A batch's header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHead {
    pub first_seq: u64,
    pub count: u32,
    pub payload_len: u32,
    payload_crc: u32,
}

impl BatchHead {
    /// Bytes the batch takes on disk, padding included.
    pub fn span(&self) -> usize {
        padded(HEADER + self.payload_len as usize)
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The header at the start of `b` if it is intact and belongs to segment `base`.
pub fn read_header(b: &[u8], base: u64) -> Option<BatchHead> {
    if b.len() < HEADER || b[0..4] != MAGIC || b[4] != VERSION {
        return None;
    }
    if crc32c::crc32c(&b[..36]) != le32(b, 36) || le64(b, 8) != base {
        return None;
    }
    Some(BatchHead {
        first_seq: le64(b, 16),
        count: le32(b, 24),
        payload_len: le32(b, 28),
        payload_crc: le32(b, 32),
    })
}

/// The payload of batch `h` at the start of `b` if it is all there and its checksum
/// holds.
pub fn payload<'a>(b: &'a [u8], h: &BatchHead) -> Option<&'a [u8]> {
    let p = b.get(HEADER..HEADER + h.payload_len as usize)?;
    (crc32c::crc32c(p) == h.payload_crc).then_some(p)
}

/// What a scan of a segment's bytes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Offsets and headers of the intact batches, in order.
    pub batches: Vec<(usize, BatchHead)>,
    /// Where the last intact batch ends.
    pub end: usize,
    /// Damaged ranges with intact batches after them, `(from, to)`: replay steps over
    /// them (a damaged batch loses its own records, never the ones after it).
    pub holes: Vec<(usize, usize)>,
    pub damage: Damage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The log ends cleanly (zeros, stale bytes of a recycled segment, end of file).
    None,
    /// A batch was cut short or its checksum fails, with nothing intact after it: a write
    /// the crash interrupted. Everything before it is kept.
    TornTail,
    /// A damaged batch with an intact batch of this segment after it: the file was
    /// corrupted in place (or a power cut kept a later unsynced write and lost an earlier
    /// one). Every intact batch is kept, before and after the damage (`holes`); the
    /// segment is quarantined once replayed.
    Corrupt,
}

/// Finds the intact batches of segment `base` in `b` (the whole file). A batch is intact
/// when its header and payload checksums hold, its records parse, and its sequence does
/// not go back; one that is not is stepped over to the next intact batch at a block
/// boundary, if there is one.
pub fn scan(b: &[u8], base: u64) -> Scan {
    let mut batches = Vec::new();
    let mut holes = Vec::new();
    let mut off = 0;
    let mut last_seq = None;
    loop {
        if let Some(h) = intact_at(b, off, base, last_seq) {
            last_seq = Some(h.first_seq + h.count as u64);
            batches.push((off, h));
            off += h.span();
            continue;
        }
        match later_batch(b, off + BLOCK, base, last_seq) {
            Some(next) => {
                holes.push((off, next));
                off = next;
            }
            None => {
                let torn = b.get(off..off + 4) == Some(&MAGIC)
                    && b.get(off + 8..off + 16) == Some(&base.to_le_bytes());
                let damage = if !holes.is_empty() {
                    Damage::Corrupt
                } else if torn {
                    Damage::TornTail
                } else {
                    Damage::None
                };
                return Scan {
                    batches,
                    end: off,
                    holes,
                    damage,
                };
            }
        }
    }
}

/// The batch at `off` if it is intact, of segment `base`, and not before `after`.
fn intact_at(b: &[u8], off: usize, base: u64, after: Option<u64>) -> Option<BatchHead> {
    let r = b.get(off..)?;
    let h = read_header(r, base)?;
    let ok = after.is_none_or(|s| h.first_seq >= s)
        && payload(r, &h).is_some_and(|p| parses(p, h.count));
    ok.then_some(h)
}

/// The offset of the first intact batch of segment `base` (not before `after`) at a
/// block boundary from `from` on.
fn later_batch(b: &[u8], from: usize, base: u64, after: Option<u64>) -> Option<usize> {
    let mut off = from.div_ceil(BLOCK) * BLOCK;
    while off + HEADER <= b.len() {
        if intact_at(b, off, base, after).is_some() {
            return Some(off);
        }
        off += BLOCK;
    }
    None
}

/// Whether `p` holds exactly `count` well-formed records.
fn parses(p: &[u8], count: u32) -> bool {
    let mut at = 0;
    for _ in 0..count {
        match record_at(p, at) {
            Some((_, next)) => at = next,
            None => return false,
        }
    }
    at == p.len()
}

/// One record's ranges within a payload.
struct Parsed {
    topic: (u32, u32),
    key: Option<(u32, u32)>,
    value: (u32, u32),
    partition: i32,
    headers: Vec<((u32, u32), (u32, u32))>,
}

fn record_at(p: &[u8], at: usize) -> Option<(Parsed, usize)> {
    let f = p.get(at..at + RECORD_FIXED)?;
    let tl = u16::from_le_bytes([f[0], f[1]]) as usize;
    let kl = le32(f, 2);
    let vl = le32(f, 6) as usize;
    let partition = i32::from_le_bytes(f[10..14].try_into().unwrap());
    let nh = u16::from_le_bytes([f[14], f[15]]) as usize;
    let mut pos = at + RECORD_FIXED;
    // The next `n` bytes as a range, if the payload has them.
    let take = |pos: &mut usize, n: usize| -> Option<(u32, u32)> {
        let end = pos.checked_add(n).filter(|&e| e <= p.len())?;
        let r = (*pos as u32, end as u32);
        *pos = end;
        Some(r)
    };
    let topic = take(&mut pos, tl)?;
    let key = if kl == NO_KEY {
        None
    } else {
        Some(take(&mut pos, kl as usize)?)
    };
    let value = take(&mut pos, vl)?;
    let mut headers = Vec::with_capacity(nh.min(64));
    for _ in 0..nh {
        let h = p.get(pos..pos + 6)?;
        let (nl, hl) = (
            u16::from_le_bytes([h[0], h[1]]) as usize,
            le32(h, 2) as usize,
        );
        pos += 6;
        let name = take(&mut pos, nl)?;
        let value = take(&mut pos, hl)?;
        headers.push((name, value));
    }
    Some((
        Parsed {
            topic,
            key,
            value,
            partition,
            headers,
        },
        pos,
    ))
}

/// Turns a checked payload into records for the Kafka thread, without copying it: the
/// payload becomes the batch's arena. Each record gets the `ingestd-id` header
/// `<executor>-<sequence>` and `opaque(i)` (its delivery opaque, by index in the batch).
/// Returns None if the payload does not parse (it passed its checksum: never expected).
pub fn into_records(
    payload: Vec<u8>,
    count: u32,
    first_seq: u64,
    executor: u8,
    mut opaque: impl FnMut(usize) -> usize,
) -> Option<RecordBatch> {
    let mut b = RecordBatch {
        arena: payload,
        records: Vec::with_capacity(count as usize),
        headers: Vec::new(),
    };
    let mut at = 0;
    let mut parsed = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (r, next) = record_at(&b.arena, at)?;
        parsed.push(r);
        at = next;
    }
    // The id headers go after the payload: room for them at once, not a reallocation
    // (a copy of the whole payload) as the arena fills.
    b.arena.reserve(ID_HEADER.len() + count as usize * 24);
    let id_name = b.put(ID_HEADER.as_bytes());
    let mut id = itoa_buf();
    for (i, r) in parsed.into_iter().enumerate() {
        let h0 = b.headers.len() as u32;
        for (name, value) in r.headers {
            b.headers.push(HeaderMeta { name, value });
        }
        let v = b.put(format_id(&mut id, executor, first_seq + i as u64));
        b.headers.push(HeaderMeta {
            name: id_name,
            value: v,
        });
        b.records.push(RecordMeta {
            topic: r.topic,
            key: r.key,
            value: r.value,
            headers: (h0, b.headers.len() as u32),
            partition: r.partition,
            opaque: opaque(i),
        });
    }
    Some(b)
}

fn itoa_buf() -> [u8; 24] {
    [0; 24]
}

/// `<executor>-<seq>` in decimal, written into `buf`.
pub fn format_id(buf: &mut [u8; 24], executor: u8, seq: u64) -> &[u8] {
    use std::io::Write;
    let mut w = &mut buf[..];
    let _ = write!(w, "{executor}-{seq}");
    let left = w.len();
    &buf[..24 - left]
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 1_000;

    /// A segment image of `batches` batches of 1..=n records each, in a zero-filled file of
    /// `size` bytes; returns it with the records' values in order.
    fn segment(batches: usize, size: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut file = vec![0u8; size];
        let mut values = Vec::new();
        let (mut off, mut seq) = (0, BASE);
        for b in 0..batches {
            let mut payload = Vec::new();
            let n = 1 + b % 5;
            for i in 0..n {
                // Sizes that cross block boundaries now and then.
                let v = vec![b'a' + (i % 26) as u8; 100 + (b * 997 + i * 131) % 5000];
                let h = [(&b"h"[..], &b"x"[..])];
                push_record(&mut payload, b"t", Some(b"k"), &v, -1, h.iter().copied());
                values.push(v);
            }
            let h = header(BASE, seq, n as u32, &payload);
            let span = padded(HEADER + payload.len());
            if file.len() < off + span {
                file.resize(off + span, 0);
            }
            file[off..off + HEADER].copy_from_slice(&h);
            file[off + HEADER..off + HEADER + payload.len()].copy_from_slice(&payload);
            off += padded(HEADER + payload.len());
            seq += n as u64;
        }
        file.truncate(size.max(off));
        (file, values)
    }

    fn values_of(file: &[u8], s: &Scan) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (off, h) in &s.batches {
            let p = file[off + HEADER..off + HEADER + h.payload_len as usize].to_vec();
            let b = into_records(p, h.count, h.first_seq, 3, |_| 0).unwrap();
            for r in &b.records {
                out.push(b.get(r.value).to_vec());
            }
        }
        out
    }

    #[test]
    fn round_trip_with_ids_and_headers() {
        let (file, values) = segment(7, 1 << 20);
        let s = scan(&file, BASE);
        assert_eq!(s.damage, Damage::None);
        assert_eq!(values_of(&file, &s), values);
        let (off, h) = s.batches[1];
        let p = file[off + HEADER..off + HEADER + h.payload_len as usize].to_vec();
        let b = into_records(p, h.count, h.first_seq, 3, |i| i + 10).unwrap();
        let r = &b.records[1];
        let hs = &b.headers[r.headers.0 as usize..r.headers.1 as usize];
        assert_eq!(b.get(hs[0].name), b"h");
        assert_eq!(b.get(hs[1].name), ID_HEADER.as_bytes());
        assert_eq!(b.get(hs[1].value), format!("3-{}", BASE + 2).as_bytes());
        assert_eq!(b.get(r.key.unwrap()), b"k");
        assert_eq!((r.partition, r.opaque), (-1, 11));
    }

    #[test]
    fn stale_batches_of_a_recycled_segment_end_the_log() {
        let (old, _) = segment(6, 1 << 20);
        // A new life of the file (another base) wrote two batches over the old ones.
        let mut file = old.clone();
        let mut payload = Vec::new();
        push_record(&mut payload, b"t", None, b"new", 0, std::iter::empty());
        let h = header(BASE + 500, BASE + 500, 1, &payload);
        file[..HEADER].copy_from_slice(&h);
        file[HEADER..HEADER + payload.len()].copy_from_slice(&payload);
        let s = scan(&file, BASE + 500);
        assert_eq!((s.batches.len(), s.end, s.damage), (1, BLOCK, Damage::None));
    }

    /// The model test: cut the file at every block boundary and at odd bytes, flip bits
    /// anywhere. Recovery keeps exactly the intact batches, before and after the damage,
    /// says whether the damage is a torn tail or corruption in the middle, and never
    /// panics.
    #[test]
    fn truncation_and_bit_flips_keep_every_intact_batch() {
        let (file, values) = segment(12, 0);
        let full = scan(&file, BASE);
        assert_eq!(full.damage, Damage::None);
        assert_eq!(full.batches.len(), 12);
        let ends: Vec<usize> = full.batches.iter().map(|(o, h)| o + h.span()).collect();
        let counts: Vec<usize> = full
            .batches
            .iter()
            .scan(0, |n, (_, h)| {
                *n += h.count as usize;
                Some(*n)
            })
            .collect();
        let mut cuts: Vec<usize> = (0..=file.len()).step_by(BLOCK).collect();
        cuts.extend((0..file.len()).step_by(997));
        for cut in cuts {
            let s = scan(&file[..cut], BASE);
            // Every batch that ends (its payload) before the cut survives.
            let whole = full
                .batches
                .iter()
                .take_while(|(o, h)| o + HEADER + h.payload_len as usize <= cut)
                .count();
            assert_eq!(s.batches.len(), whole, "cut at {cut}");
            assert!(s.holes.is_empty(), "cut at {cut}");
            let kept = if whole == 0 { 0 } else { counts[whole - 1] };
            assert_eq!(values_of(&file, &s), values[..kept], "cut at {cut}");
            let at_boundary = whole == 0 && cut == 0 || whole > 0 && ends[whole - 1] >= cut;
            if !at_boundary {
                assert_eq!(s.damage, Damage::TornTail, "cut at {cut}");
            }
        }
        for (i, &(off, h)) in full.batches.iter().enumerate() {
            let before = if i == 0 { 0 } else { counts[i - 1] };
            let last = i == full.batches.len() - 1;
            for at in [
                off,
                off + 20,
                off + HEADER + 3,
                off + HEADER + h.payload_len as usize - 1,
            ] {
                let mut bad = file.clone();
                bad[at] ^= 0x10;
                let s = scan(&bad, BASE);
                // Every batch but the damaged one, in order.
                let mut want = values[..before].to_vec();
                if !last {
                    want.extend_from_slice(&values[counts[i]..]);
                    assert_eq!(s.holes, vec![(off, ends[i])], "flip at {at}");
                    assert_eq!(s.damage, Damage::Corrupt, "flip at {at} of batch {i}");
                    assert_eq!(s.end, *ends.last().unwrap());
                } else {
                    assert!(s.holes.is_empty());
                    assert_eq!(s.end, off);
                    if at >= off + 16 {
                        assert_eq!(s.damage, Damage::TornTail, "flip at {at} of batch {i}");
                    }
                }
                assert_eq!(s.batches.len(), full.batches.len() - 1, "flip at {at}");
                assert_eq!(values_of(&bad, &s), want, "flip at {at}");
            }
        }
        // Two damaged batches with intact ones between and after: both stepped over.
        let mut bad = file.clone();
        bad[full.batches[2].0 + HEADER] ^= 1;
        bad[full.batches[7].0 + 5] ^= 1;
        let s = scan(&bad, BASE);
        assert_eq!(s.holes.len(), 2);
        assert_eq!(s.batches.len(), full.batches.len() - 2);
        // A batch whose sequence goes back is not this segment's next: stepped over.
        let mut bad = file.clone();
        let (o3, h3) = full.batches[3];
        let p = bad[o3 + HEADER..o3 + HEADER + h3.payload_len as usize].to_vec();
        bad[o3..o3 + HEADER].copy_from_slice(&header(BASE, BASE, h3.count, &p));
        let s = scan(&bad, BASE);
        assert_eq!(s.holes, vec![(o3, ends[3])]);
        // A sequence gap (a failed write before the writer sealed segments on errors)
        // does not end the log.
        let mut gap = file.clone();
        for &(o, h) in &full.batches[5..] {
            let p = gap[o + HEADER..o + HEADER + h.payload_len as usize].to_vec();
            gap[o..o + HEADER].copy_from_slice(&header(BASE, h.first_seq + 7, h.count, &p));
        }
        let s = scan(&gap, BASE);
        assert_eq!((s.batches.len(), s.damage), (12, Damage::None));
        // Garbage and an empty file: nothing, no panic.
        assert_eq!(scan(&[], BASE).batches.len(), 0);
        let noise: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(scan(&noise, BASE).batches.len(), 0);
    }
}
