//! Where a backup's block list lives while it is built: one fixed-width slot per block.
//!
//! The A3 keeps a 16 TiB disk's list (64 Mi blocks at 256 KiB) in a temp file, not in
//! memory; the assembler stays sans-IO by going through [`Slots`], with an in-memory
//! implementation (`Vec`) for tests and small uses. A slot is [`SLOT_LEN`] bytes: a tag
//! (0: all-zero block, 1: stored block) and the id (zeros after tag 0), so slot `i` is at
//! byte `33 i` and a file grown with zeros holds zero blocks.

use std::io;

use super::messages::WireId;

/// Bytes per slot: a tag and a 32-byte id.
pub const SLOT_LEN: usize = 33;

/// A block list, one slot per block index.
pub trait Slots {
    /// How many slots there are.
    fn len(&self) -> u64;

    /// Whether there is no slot.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Grows (with zero blocks) or shrinks the list to `n` slots.
    fn resize(&mut self, n: u64) -> io::Result<()>;

    /// Reads slots `first..first + out.len()`.
    fn read(&mut self, first: u64, out: &mut [Option<WireId>]) -> io::Result<()>;

    /// Writes slots `first..first + slots.len()`.
    fn write(&mut self, first: u64, slots: &[Option<WireId>]) -> io::Result<()>;
}

/// Encodes one slot.
pub fn encode_slot(slot: &Option<WireId>, out: &mut [u8; SLOT_LEN]) {
    match slot {
        None => *out = [0; SLOT_LEN],
        Some(id) => {
            out[0] = 1;
            out[1..].copy_from_slice(id);
        }
    }
}

/// Decodes one slot; any tag but 0 and 1 is damage.
pub fn decode_slot(bytes: &[u8; SLOT_LEN]) -> io::Result<Option<WireId>> {
    match bytes[0] {
        0 => Ok(None),
        1 => Ok(Some(bytes[1..].try_into().expect("32 bytes"))),
        t => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("block list slot with tag {t}"),
        )),
    }
}

fn out_of_range(first: u64, n: usize, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("slots {first}..+{n} past the list's {len}"),
    )
}

impl Slots for Vec<Option<WireId>> {
    fn len(&self) -> u64 {
        <[_]>::len(self) as u64
    }

    fn resize(&mut self, n: u64) -> io::Result<()> {
        let n = usize::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Vec::resize(self, n, None);
        Ok(())
    }

    fn read(&mut self, first: u64, out: &mut [Option<WireId>]) -> io::Result<()> {
        let len = Slots::len(self);
        let start = usize::try_from(first).unwrap_or(usize::MAX);
        let src = self
            .get(start..start.saturating_add(out.len()))
            .ok_or_else(|| out_of_range(first, out.len(), len))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, first: u64, slots: &[Option<WireId>]) -> io::Result<()> {
        let len = Slots::len(self);
        let start = usize::try_from(first).unwrap_or(usize::MAX);
        let dst = self
            .get_mut(start..start.saturating_add(slots.len()))
            .ok_or_else(|| out_of_range(first, slots.len(), len))?;
        dst.copy_from_slice(slots);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_encoding_is_fixed_width_and_zero_means_a_zero_block() {
        let mut buf = [7u8; SLOT_LEN];
        encode_slot(&None, &mut buf);
        assert_eq!(buf, [0; SLOT_LEN]);
        assert_eq!(decode_slot(&buf).unwrap(), None);
        encode_slot(&Some([9; 32]), &mut buf);
        assert_eq!(buf[0], 1);
        assert_eq!(decode_slot(&buf).unwrap(), Some([9; 32]));
        buf[0] = 2;
        assert!(decode_slot(&buf).is_err());
    }

    #[test]
    fn the_in_memory_list_refuses_ranges_past_its_end() {
        let mut v: Vec<Option<WireId>> = Vec::new();
        Slots::resize(&mut v, 3).unwrap();
        v.write(1, &[Some([1; 32]), None]).unwrap();
        let mut out = [None; 2];
        v.read(0, &mut out).unwrap();
        assert_eq!(out, [None, Some([1; 32])]);
        assert!(v.write(2, &[None, None]).is_err());
        assert!(v.read(u64::MAX, &mut out).is_err());
    }
}
