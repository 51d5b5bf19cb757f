//! TFRecord framing, the container of TensorBoard event files: per record a little-endian u64 length, the
//! masked CRC32C of those 8 bytes, the data, and the masked CRC32C of the data. The reader checks both
//! checksums, so a test (or a tool) can tell a well-formed file from a torn one.

use std::io::{self, Read, Write};

/// TFRecord's checksum: CRC32C rotated right by 15 bits plus a constant, so that a CRC computed over data
/// that itself holds CRCs does not degenerate.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends one framed record to `out`.
pub fn write_record(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc32c(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc32c(data).to_le_bytes())
}

/// Reads every record of a TFRecord stream, checking the framing and both checksums of each; the error says
/// which record is bad and why.
pub fn read_records(mut input: impl Read) -> Result<Vec<Vec<u8>>, String> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(|e| format!("cannot read the records: {e}"))?;
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let n = records.len();
        let header = bytes.get(pos..pos + 12).ok_or_else(|| format!("record {n}: truncated length header"))?;
        let (len_bytes, len_crc) = header.split_at(8);
        let crc = u32::from_le_bytes(len_crc.try_into().expect("4 bytes"));
        if crc != masked_crc32c(len_bytes) {
            return Err(format!("record {n} at byte {pos}: length checksum mismatch"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")) as usize;
        let start = pos + 12;
        let data = bytes.get(start..start + len).ok_or_else(|| format!("record {n}: truncated data ({len} bytes)"))?;
        let data_crc =
            bytes.get(start + len..start + len + 4).ok_or_else(|| format!("record {n}: no data checksum"))?;
        if u32::from_le_bytes(data_crc.try_into().expect("4 bytes")) != masked_crc32c(data) {
            return Err(format!("record {n} at byte {pos}: data checksum mismatch"));
        }
        records.push(data.to_vec());
        pos = start + len + 4;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C of "123456789" is 0xE3069283 (RFC 3720's check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn records_round_trip_and_corruption_is_found() {
        let mut buf = Vec::new();
        write_record(&mut buf, b"hello").unwrap();
        write_record(&mut buf, b"").unwrap();
        write_record(&mut buf, &[7u8; 300]).unwrap();
        let recs = read_records(&buf[..]).unwrap();
        assert_eq!(recs, vec![b"hello".to_vec(), Vec::new(), vec![7u8; 300]]);
        let mut bad = buf.clone();
        bad[14] ^= 1; // inside the first record's data
        assert!(read_records(&bad[..]).unwrap_err().contains("data checksum"));
        let mut bad = buf.clone();
        bad[0] ^= 1; // the first length
        assert!(read_records(&bad[..]).unwrap_err().contains("length checksum"));
        assert!(read_records(&buf[..buf.len() - 2]).unwrap_err().contains("record 2"));
    }
}
