//! Avro binary primitives (zig-zag varints, length-prefixed strings, unions, enums), for the
//! hand-written codecs of hot record types. Reading checks every length and index: malformed
//! input is an error, never a panic or an over-allocation.

use std::fmt;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    /// Byte offset in the body.
    pub at: usize,
    /// What was wrong.
    pub what: String,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Appends a zig-zag varint `long`.
#[inline]
pub fn write_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends a `string`.
#[inline]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    write_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends a `["null", "string"]` union.
#[inline]
pub fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(2);
            write_str(out, s);
        }
    }
}

/// Appends a `["null", "long"]` union.
#[inline]
pub fn write_opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(2);
            write_long(out, v);
        }
    }
}

/// Appends a `["null", "double"]` union.
#[inline]
pub fn write_opt_double(out: &mut Vec<u8>, v: Option<f64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(2);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// Reads Avro primitives from a body.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn err<T>(&self, what: impl Into<String>) -> Result<T, ReadError> {
        Err(ReadError {
            at: self.pos,
            what: what.into(),
        })
    }

    /// A zig-zag varint `long` (at most 10 bytes).
    #[inline]
    pub fn long(&mut self) -> Result<i64, ReadError> {
        // Union branches, enum symbols and short lengths are one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b & 0x80 == 0 {
                self.pos += 1;
                let z = u64::from(b);
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        self.long_multi_byte()
    }

    fn long_multi_byte(&mut self) -> Result<i64, ReadError> {
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return self.err("unexpected end of input in a long");
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return self.err("long overflows 64 bits");
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
            shift += 7;
        }
    }

    /// A `string`, borrowed from the body.
    #[inline]
    pub fn str(&mut self) -> Result<&'a str, ReadError> {
        let len = self.long()?;
        if len < 0 || len as u64 > self.remaining() as u64 {
            return self.err(format!(
                "string length {len} exceeds the {} bytes left",
                self.remaining()
            ));
        }
        let bytes = &self.buf[self.pos..self.pos + len as usize];
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                self.pos += len as usize;
                Ok(s)
            }
            Err(_) => self.err("string is not valid UTF-8"),
        }
    }

    /// The branch of a `["null", X]` union: false for null, true for X.
    #[inline]
    pub fn nullable(&mut self) -> Result<bool, ReadError> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            b => self.err(format!("union branch {b} out of range 0..2")),
        }
    }

    /// A `["null", "string"]` union.
    #[inline]
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, ReadError> {
        if self.nullable()? {
            self.str().map(Some)
        } else {
            Ok(None)
        }
    }

    /// A `["null", "long"]` union.
    #[inline]
    pub fn opt_long(&mut self) -> Result<Option<i64>, ReadError> {
        if self.nullable()? {
            self.long().map(Some)
        } else {
            Ok(None)
        }
    }

    /// A `double`.
    #[inline]
    pub fn double(&mut self) -> Result<f64, ReadError> {
        match self.buf.get(self.pos..self.pos + 8) {
            Some(b) => {
                self.pos += 8;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Ok(f64::from_le_bytes(a))
            }
            None => self.err("unexpected end of input in a double"),
        }
    }

    /// A `["null", "double"]` union.
    #[inline]
    pub fn opt_double(&mut self) -> Result<Option<f64>, ReadError> {
        if self.nullable()? {
            self.double().map(Some)
        } else {
            Ok(None)
        }
    }

    /// A `boolean`.
    #[inline]
    pub fn boolean(&mut self) -> Result<bool, ReadError> {
        match self.buf.get(self.pos) {
            Some(0) => {
                self.pos += 1;
                Ok(false)
            }
            Some(1) => {
                self.pos += 1;
                Ok(true)
            }
            Some(b) => self.err(format!("boolean byte {b} is neither 0 nor 1")),
            None => self.err("unexpected end of input in a boolean"),
        }
    }

    /// An enum symbol: `symbols` in schema order.
    #[inline]
    pub fn enumeration<T: Copy>(&mut self, name: &str, symbols: &[T]) -> Result<T, ReadError> {
        let i = self.long()?;
        match usize::try_from(i).ok().and_then(|i| symbols.get(i)) {
            Some(s) => Ok(*s),
            None => self.err(format!(
                "{name} index {i} out of range 0..{}",
                symbols.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_round_trip_at_the_edges() {
        for v in [0, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1_764_000_000_000] {
            let mut out = Vec::new();
            write_long(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.long().unwrap(), v);
            assert_eq!(r.remaining(), 0);
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(Reader::new(&[0x80; 11]).long().is_err());
        assert!(Reader::new(&[0xff; 9]).long().is_err());
        assert!(Reader::new(&[0x7f]).str().is_err()); // length -64
        assert!(Reader::new(&[0x08, b'a']).str().is_err()); // length 4, 1 byte left
        assert!(Reader::new(&[0x02, 0xff]).str().is_err()); // not UTF-8
        assert!(Reader::new(&[0x04]).nullable().is_err());
        assert!(Reader::new(&[0x02]).boolean().is_err());
        assert!(Reader::new(&[0x06]).enumeration("x", &[1, 2]).is_err());
        assert!(Reader::new(&[0x01]).enumeration("x", &[1, 2]).is_err()); // -1
    }
}
