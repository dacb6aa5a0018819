//! A connection's read buffer, and the body of a chunked request as decoded, within the
//! executor's memory budget: what was received and not yet handled, grown for a large
//! request (exactly to a known body's size) and shrunk back once it has passed.

use crate::error::HttpError;

/// The size every connection's buffer starts with (not charged to the budget: the
/// memory formula counts it per connection).
pub const INITIAL: usize = 4096;
/// Buffers larger than this go back to their first size once a request has passed (so an
/// idle connection holds at most this much of the budget; smaller ones are kept, as
/// re-growing them per request would cost an allocation each).
const SHRINK_ABOVE: usize = 16 << 10;

/// Where buffer growth is charged: the executor's memory budget.
pub trait Budget {
    /// Takes `n` bytes; false, and nothing taken, when they do not fit.
    fn take(&self, n: usize) -> bool;
    fn give(&self, n: usize);
}

pub struct ReadBuf {
    buf: Vec<u8>,
    /// `buf[start..end]` is received and not yet handled.
    start: usize,
    end: usize,
    /// A chunked request's body, decoded.
    pub decoded: Vec<u8>,
    /// Budget bytes held: `buf` above `INITIAL` plus `decoded`'s capacity.
    charged: usize,
}

impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf {
            buf: vec![0; INITIAL],
            start: 0,
            end: 0,
            decoded: Vec::new(),
            charged: 0,
        }
    }
}

impl ReadBuf {
    /// The received bytes not yet handled.
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Room to receive into: the buffer grows by `INITIAL` when full.
    pub fn spare(&mut self, budget: &impl Budget) -> Result<&mut [u8], HttpError> {
        if self.end == self.buf.len() {
            self.reserve(self.end - self.start + INITIAL, budget)?;
        }
        Ok(&mut self.buf[self.end..])
    }

    /// `n` bytes were received into `spare`.
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// The first `n` unread bytes are handled.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room for `need` unread bytes: compacts, then grows, within the budget
    /// (MemoryFull, before allocating, when it has no room).
    pub fn reserve(&mut self, need: usize, budget: &impl Budget) -> Result<(), HttpError> {
        if self.start > 0 && self.buf.len() - self.start < need.max(1) + 1 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = self.start + need;
        if want > self.buf.len() {
            // Exactly a known body's size, or doubling for a head or a chunked body.
            let cap = want.max(self.buf.len() * 2);
            if !budget.take(cap - self.buf.len()) {
                return Err(HttpError::MemoryFull);
            }
            self.charged += cap - self.buf.len();
            self.buf.resize(cap, 0);
        }
        Ok(())
    }

    /// Drops `n` unread bytes starting `at` bytes into them (the wire bytes of a chunked
    /// body once decoded); what precedes them (the head) and follows them stays.
    pub fn cut(&mut self, at: usize, n: usize) {
        let from = self.start + at;
        self.buf.copy_within(from + n..self.end, from);
        self.end -= n;
    }

    /// The wire bytes after a head of `head_len` bytes, and the body decoded so far.
    pub fn split_for_decode(&mut self, head_len: usize) -> (&[u8], &mut Vec<u8>) {
        (
            &self.buf[self.start + head_len..self.end],
            &mut self.decoded,
        )
    }

    /// Budget bytes that `shrink` gives back once the current request is handled (when
    /// nothing else is unread): those that move into the queue with its records.
    pub fn moving(&self) -> usize {
        let buf = if self.buf.len() > SHRINK_ABOVE {
            self.buf.len() - INITIAL
        } else {
            0
        };
        let decoded = if self.decoded.capacity() > SHRINK_ABOVE {
            self.decoded.capacity()
        } else {
            0
        };
        (buf + decoded).min(self.charged)
    }

    fn footprint(&self) -> usize {
        self.buf.len() - INITIAL + self.decoded.capacity()
    }

    /// Charges what `decoded` grew by.
    pub fn recharge(&mut self, budget: &impl Budget) -> Result<(), HttpError> {
        let now = self.footprint();
        if now > self.charged {
            if !budget.take(now - self.charged) {
                return Err(HttpError::MemoryFull);
            }
            self.charged = now;
        }
        Ok(())
    }

    /// After a request: buffers that grew for a large one go back to their first size
    /// (the receive buffer only once nothing unread is left), their bytes to the budget.
    pub fn shrink(&mut self, budget: &impl Budget) {
        if self.start == self.end && self.buf.len() > SHRINK_ABOVE {
            *self = ReadBuf {
                charged: self.charged,
                decoded: std::mem::take(&mut self.decoded),
                ..ReadBuf::default()
            };
        }
        if self.decoded.capacity() > SHRINK_ABOVE {
            self.decoded = Vec::new();
        }
        let now = self.footprint();
        if now < self.charged {
            budget.give(self.charged - now);
            self.charged = now;
        }
    }

    /// Gives every budget byte back (the connection closes).
    pub fn release(&mut self, budget: &impl Budget) {
        budget.give(std::mem::take(&mut self.charged));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A budget of `.1` bytes, `.0` of them in use.
    struct Fixed(Cell<usize>, usize);

    impl Budget for Fixed {
        fn take(&self, n: usize) -> bool {
            let ok = self.0.get() + n <= self.1;
            if ok {
                self.0.set(self.0.get() + n);
            }
            ok
        }
        fn give(&self, n: usize) {
            self.0.set(self.0.get() - n);
        }
    }

    #[test]
    fn a_known_body_is_charged_exactly_and_given_back_after() {
        let budget = Fixed(Cell::new(0), 1 << 20);
        let mut rb = ReadBuf::default();
        rb.spare(&budget).unwrap()[..10].copy_from_slice(b"head\r\n\r\nab");
        rb.filled(10);
        rb.reserve(8 + 200_000, &budget).unwrap();
        assert_eq!(budget.0.get(), 8 + 200_000 - INITIAL, "exact, no doubling");
        assert_eq!(rb.unread(), b"head\r\n\r\nab");
        rb.consume(10);
        rb.shrink(&budget);
        assert_eq!(budget.0.get(), 0);
        assert_eq!(rb.charged, 0);
    }

    #[test]
    fn growth_past_the_budget_fails_before_allocating() {
        let budget = Fixed(Cell::new(0), 100_000);
        let mut rb = ReadBuf::default();
        assert_eq!(rb.reserve(200_000, &budget), Err(HttpError::MemoryFull));
        assert_eq!((budget.0.get(), rb.charged), (0, 0));
        assert_eq!(rb.buf.len(), INITIAL);
        rb.reserve(50_000, &budget).unwrap();
        rb.release(&budget);
        assert_eq!(budget.0.get(), 0);
    }

    #[test]
    fn cut_keeps_what_is_around_and_shrink_waits_for_unread_bytes() {
        let budget = Fixed(Cell::new(0), 1 << 20);
        let mut rb = ReadBuf::default();
        rb.reserve(100_000, &budget).unwrap();
        let data = b"HEAD|wire-bytes|next";
        rb.spare(&budget).unwrap()[..data.len()].copy_from_slice(data);
        rb.filled(data.len());
        rb.cut(5, 11);
        assert_eq!(rb.unread(), b"HEAD|next");
        rb.consume(5);
        rb.shrink(&budget);
        assert!(rb.charged > 0, "unread bytes left: not shrunk yet");
        rb.consume(4);
        rb.shrink(&budget);
        assert_eq!((budget.0.get(), rb.charged), (0, 0));
    }
}
