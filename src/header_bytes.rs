//! Header values made per request, cut from a buffer per worker thread instead of allocated
//! one by one: a generated request id, the `RateLimit` state, `X-RateLimit-Remaining` and a
//! non-zero `X-RateLimit-Reset`.
//!
//! Built the usual way, each of these costs one or two allocations per request (`http` turns
//! a `String` or an integer into `Bytes` through a second, shared block). Here each value is a
//! `Bytes` slice of the thread's current chunk: one chunk of [`CHUNK`] bytes serves about ten
//! requests, and is freed when the last value cut from it is dropped.
//!
//! The cost: a value that lives long keeps its whole chunk. A request waiting on a slow
//! upstream holds its id, so each such request can keep up to [`CHUNK`] bytes alive.

use std::cell::RefCell;

use bytes::{BufMut, BytesMut};
use http::header::{HeaderValue, InvalidHeaderValue};

/// Size of each thread's chunks.
pub(crate) const CHUNK: usize = 1024;

thread_local! {
    static BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A header value written by `write`, which should write at most `max_len` bytes (more still
/// works, at the cost of an allocation).
pub(crate) fn build(
    max_len: usize,
    write: impl FnOnce(&mut BytesMut),
) -> Result<HeaderValue, InvalidHeaderValue> {
    let bytes = BUF.with_borrow_mut(|buf| {
        if buf.capacity() < max_len {
            // The old chunk lives on in the values cut from it.
            *buf = BytesMut::with_capacity(CHUNK.max(max_len));
        }
        write(buf);
        buf.split().freeze()
    });
    HeaderValue::from_maybe_shared(bytes)
}

/// A number as a header value.
pub(crate) fn number(n: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    // Digits are always valid; the fallback only keeps a panic off the request path.
    build(digits.len(), |buf| buf.put_slice(digits)).unwrap_or_else(|_| HeaderValue::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_hold_what_was_written() {
        assert_eq!(number(0), "0");
        assert_eq!(number(u64::MAX), u64::MAX.to_string().as_str());
        let v = build(5, |buf| buf.put_slice(b"hello")).expect("value");
        assert_eq!(v, "hello");
    }

    #[test]
    fn consecutive_values_share_a_chunk_and_outlive_it() {
        BUF.with_borrow_mut(|buf| *buf = BytesMut::new());
        let first = build(3, |buf| buf.put_slice(b"abc")).expect("value");
        let second = build(3, |buf| buf.put_slice(b"def")).expect("value");
        // Cut from the same fresh chunk, side by side.
        assert_eq!(second.as_bytes().as_ptr(), first.as_bytes()[3..].as_ptr());
        // Filling many chunks moves on to fresh ones; older values keep their bytes.
        let many: Vec<HeaderValue> = (0..3 * CHUNK as u64).map(number).collect();
        for (n, v) in many.iter().enumerate() {
            assert_eq!(v, n.to_string().as_str());
        }
        assert_eq!(first, "abc");
        assert_eq!(second, "def");
    }

    #[test]
    fn a_value_longer_than_promised_is_still_whole() {
        let long = "x".repeat(3 * CHUNK);
        let v = build(1, |buf| buf.put_slice(long.as_bytes())).expect("value");
        assert_eq!(v, long.as_str());
        assert_eq!(number(7), "7");
    }

    #[test]
    fn invalid_bytes_are_refused() {
        assert!(build(1, |buf| buf.put_slice(b"\n")).is_err());
    }
}
