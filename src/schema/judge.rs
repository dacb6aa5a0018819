//! One request's records judged against their topic's schemas: which are invalid and
//! why, in record order (the 422 body and the dead-letter headers read it).

use super::{Bad, TopicSchema};

/// A record that did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Its index in the request (0-based: the NDJSON line, the REST v2 `records` entry).
    pub record: usize,
    /// Whether its key failed (`key_schema`), not its value.
    pub key: bool,
    pub bad: Bad,
}

pub struct Judge<'s> {
    pub schema: &'s TopicSchema,
    /// Records seen so far.
    pub records: usize,
    /// The records that did not pass, in order.
    pub problems: Vec<Problem>,
}

impl<'s> Judge<'s> {
    pub fn new(schema: &'s TopicSchema) -> Judge<'s> {
        Judge {
            schema,
            records: 0,
            problems: Vec::new(),
        }
    }

    /// Judges the next record: its value against `schema`, its key (when it has one)
    /// against `key_schema`. The first failure is the record's.
    pub fn record(&mut self, key: Option<&[u8]>, value: &[u8]) {
        let i = self.records;
        self.records += 1;
        let s = self.schema;
        let value_bad = s.value.as_ref().and_then(|c| c.check(value).err());
        let bad = match value_bad {
            Some(b) => Some((false, b)),
            None => key
                .zip(s.key.as_ref())
                .and_then(|(k, c)| c.check(k).err())
                .map(|b| (true, b)),
        };
        if let Some((key, bad)) = bad {
            self.problems.push(Problem {
                record: i,
                key,
                bad,
            });
        }
    }

    pub fn valid(&self) -> usize {
        self.records - self.problems.len()
    }
}

/// Walks a judged request's records in order, telling which failed: the dead-letter
/// routing asks once per record, in the same order the judge saw them.
pub struct Cursor<'j> {
    problems: &'j [Problem],
    /// Problems handed out so far.
    rank: usize,
    next: usize,
}

impl<'j> Cursor<'j> {
    pub fn new(problems: &'j [Problem]) -> Cursor<'j> {
        Cursor {
            problems,
            rank: 0,
            next: 0,
        }
    }

    /// Whether the next record failed: its rank among the problems.
    pub fn next_record(&mut self) -> Option<usize> {
        let i = self.next;
        self.next += 1;
        match self.problems.get(self.rank) {
            Some(p) if p.record == i => {
                self.rank += 1;
                Some(self.rank - 1)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_names_the_failed_records_in_order() {
        let bad = |record| Problem {
            record,
            key: false,
            bad: Bad::NotJson("x".into()),
        };
        let problems = [bad(1), bad(2), bad(5)];
        let mut c = Cursor::new(&problems);
        let seen: Vec<_> = (0..7).map(|_| c.next_record()).collect();
        assert_eq!(seen, [None, Some(0), Some(1), None, None, Some(2), None]);
    }
}
