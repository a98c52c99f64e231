//! A very small DER reader and writer for the two places where rcgen and ring fall short:
//! splicing subject/issuer names into a certificate (rcgen's `DistinguishedName` holds one value
//! per attribute type, Talos puts one Organization per role) and wrapping SEC1 EC keys in PKCS#8
//! (ring only reads PKCS#8).
//!
//! Only the definite-length, low-tag-number form is handled, which is all DER allows for the
//! structures touched here. Every read is bounds-checked and returns `None` on malformed input.

/// ASN.1 universal tags used here.
pub(crate) mod tag {
    pub(crate) const INTEGER: u8 = 0x02;
    pub(crate) const BIT_STRING: u8 = 0x03;
    pub(crate) const OCTET_STRING: u8 = 0x04;
    pub(crate) const OID: u8 = 0x06;
    pub(crate) const UTF8_STRING: u8 = 0x0c;
    pub(crate) const SEQUENCE: u8 = 0x30;
    pub(crate) const SET: u8 = 0x31;
}

/// One element: its tag, its content, and the whole encoding (header and content).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
    pub(crate) raw: &'a [u8],
}

/// Reads one element from the front of `input`, returning it and the rest.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        // High-tag-number form: not used by anything we read.
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        // 0x80 is the indefinite form (not DER); more than 4 length bytes is absurd here.
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (len_bytes, after) = rest.split_at(n);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return None;
    }
    let header_len = input.len() - rest.len();
    let (content, rest) = rest.split_at(len);
    let raw = input.get(..header_len + len)?;
    Some((Tlv { tag, content, raw }, rest))
}

/// Reads every element of `content` (the inside of a SEQUENCE or SET).
pub(crate) fn read_all(mut content: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (tlv, rest) = read_tlv(content)?;
        out.push(tlv);
        content = rest;
    }
    Some(out)
}

/// Appends one element with the given tag and content.
pub(crate) fn write_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        // Short form: the cast cannot truncate because len < 0x80.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let significant = &bytes[skip..];
        // At most size_of::<usize>() bytes, so this fits in the low 7 bits.
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
}

/// Returns one element with the given tag and content.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    write_tlv(&mut out, tag, content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![0xab; len];
            let encoded = tlv(tag::OCTET_STRING, &content);
            let (parsed, rest) = read_tlv(&encoded).expect("parse");
            assert!(rest.is_empty());
            assert_eq!(parsed.tag, tag::OCTET_STRING);
            assert_eq!(parsed.content, &content[..]);
            assert_eq!(parsed.raw, &encoded[..]);
        }
    }

    #[test]
    fn truncated_or_indefinite_input_is_refused() {
        assert!(read_tlv(&[]).is_none());
        assert!(read_tlv(&[0x30]).is_none());
        assert!(read_tlv(&[0x30, 0x05, 0x00]).is_none());
        assert!(read_tlv(&[0x30, 0x80, 0x00, 0x00]).is_none());
        assert!(read_tlv(&[0x30, 0x82, 0x01]).is_none());
        assert!(read_tlv(&[0x1f, 0x01, 0x00]).is_none());
        assert!(read_all(&[0x02, 0x01, 0x00, 0x02]).is_none());
    }
}
