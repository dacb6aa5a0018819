//! The dead-letter file beside the spool: spooled records Kafka rejected for good (too
//! large, no such topic or partition, not authorized) are appended here, one JSON object
//! per line, and synced before their segment is credited, so they are never dropped in
//! silence. Written by the Kafka thread (rare; a blocking write is fine there).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "dead-letters.ndjson";

pub struct DeadLetters {
    path: PathBuf,
    file: Option<File>,
    /// The spool directory was synced after the file was opened (created) here.
    dir_synced: bool,
}

/// One rejected record.
pub struct Dead<'a> {
    pub topic: &'a [u8],
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub reason: &'a str,
}

impl DeadLetters {
    pub fn new(spool_dir: &Path) -> DeadLetters {
        DeadLetters {
            path: spool_dir.join(FILE_NAME),
            file: None,
            dir_synced: false,
        }
    }

    /// Appends and syncs one record. False if the file cannot be written (logged): the
    /// caller then keeps the record in the spool instead.
    pub fn write(&mut self, d: &Dead<'_>) -> bool {
        let mut line = Vec::with_capacity(d.value.len() + 128);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs());
        let _ = write!(
            line,
            "{{\"time\":{secs},\"reason\":\"{}\",\"topic\":",
            d.reason
        );
        json_bytes(&mut line, "", d.topic);
        let _ = write!(line, ",\"partition\":{}", d.partition);
        if let Some(k) = d.key {
            line.extend_from_slice(b",\"key");
            json_bytes(&mut line, "key", k);
        }
        line.extend_from_slice(b",\"value");
        json_bytes(&mut line, "value", d.value);
        line.extend_from_slice(b",\"headers\":{");
        for (i, (n, v)) in d.headers.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            json_bytes(&mut line, "", n);
            line.push(b':');
            json_bytes(&mut line, "", v);
        }
        line.extend_from_slice(b"}}\n");
        let r = (|| {
            if self.file.is_none() {
                self.file = Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)?,
                );
                if !self.dir_synced {
                    // The file's name must survive a power cut too, not only its lines
                    // (once per process: the file may have been created by this open).
                    crate::sys::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
                    self.dir_synced = true;
                }
            }
            let f = self.file.as_mut().unwrap();
            f.write_all(&line)?;
            f.sync_data()
        })();
        if let Err(e) = r {
            tracing::error!(error = %e, path = %self.path.display(), "cannot write the dead-letter file: the record stays in the spool");
            self.file = None;
            return false;
        }
        true
    }
}

/// Writes `b` as a JSON string. Where `field` is given, the caller has written `"field`
/// without its closing quote: UTF-8 text closes it as `"field":"..."`, other bytes become
/// `"field_hex":"..."`. With an empty `field` only the string is written (non-UTF-8 as
/// lossy text).
fn json_bytes(out: &mut Vec<u8>, field: &str, b: &[u8]) {
    let text = std::str::from_utf8(b);
    if !field.is_empty() {
        match text {
            Ok(_) => out.extend_from_slice(b"\":"),
            Err(_) => {
                out.extend_from_slice(b"_hex\":\"");
                for x in b {
                    let _ = write!(out, "{x:02x}");
                }
                out.push(b'"');
                return;
            }
        }
    }
    let s = String::from_utf8_lossy(b);
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_text_or_hex_values() {
        let dir = std::env::temp_dir().join(format!("ingestd-dl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = DeadLetters::new(&dir);
        assert!(d.write(&Dead {
            topic: b"t",
            partition: 2,
            key: Some(b"k\"1"),
            value: b"line\nnext",
            headers: vec![(b"ingestd-id", b"0-7")],
            reason: "too_large",
        }));
        assert!(d.write(&Dead {
            topic: b"t",
            partition: -1,
            key: None,
            value: &[0xff, 0x00],
            headers: vec![],
            reason: "unknown_topic",
        }));
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains(r#""topic":"t","partition":2,"key":"k\"1","value":"line\u000anext","headers":{"ingestd-id":"0-7"}}"#), "{}", lines[0]);
        assert!(
            lines[1].ends_with(r#""partition":-1,"value_hex":"ff00","headers":{}}"#),
            "{}",
            lines[1]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
