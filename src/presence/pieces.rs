//! Encoded bytes kept as the shared pieces they were built from. A join reply
//! or a snapshot lists everyone (a megabyte at 18,000 users); built from the
//! roster's cached pieces and written with vectored writes, hundreds of them
//! in flight cost little more than one, where joining them would copy the
//! whole list for each.

use bytes::{Bytes, BytesMut};

#[derive(Debug, Clone, Default)]
pub struct Pieces {
    parts: Vec<Bytes>,
    len: usize,
}

impl Pieces {
    pub fn with_capacity(parts: usize) -> Pieces {
        Pieces {
            parts: Vec::with_capacity(parts),
            len: 0,
        }
    }

    /// Appends `part`, sharing its memory; an empty part is not kept.
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.len += part.len();
            self.parts.push(part);
        }
    }

    /// Appends every piece of `other`, sharing their memory.
    pub fn append(&mut self, other: Pieces) {
        self.len += other.len;
        self.parts.extend(other.parts);
    }

    /// How many bytes, all pieces together.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }

    /// All pieces joined into one buffer: a copy, for what needs one
    /// contiguous buffer (a cluster's reset event, which is built once).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            parts => {
                let mut joined = BytesMut::with_capacity(self.len);
                for part in parts {
                    joined.extend_from_slice(part);
                }
                joined.freeze()
            }
        }
    }
}

impl From<Bytes> for Pieces {
    fn from(part: Bytes) -> Pieces {
        let mut pieces = Pieces::with_capacity(1);
        pieces.push(part);
        pieces
    }
}

impl From<&'static str> for Pieces {
    fn from(text: &'static str) -> Pieces {
        Pieces::from(Bytes::from_static(text.as_bytes()))
    }
}

/// Equal when the bytes are, however they are cut into pieces.
impl PartialEq for Pieces {
    fn eq(&self, other: &Pieces) -> bool {
        self.len == other.len && self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Pieces {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_equal_when_their_bytes_are_however_they_are_cut() {
        let mut one = Pieces::default();
        one.push(Bytes::from_static(b"ab"));
        one.push(Bytes::from_static(b"c"));
        one.push(Bytes::new());
        assert_eq!(one, Pieces::from("abc"));
        assert_eq!(one.len(), 3);
        assert_eq!(one.parts().len(), 2, "an empty piece is not kept");
        assert_ne!(one, Pieces::from("abd"));
    }
}
