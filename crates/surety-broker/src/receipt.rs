//! Receipts: the opaque token a consumer acks or nacks with. It names one delivery
//! (partition, offset, delivery number, and which incarnation and position of the group
//! it was made in) and carries an HMAC-SHA256 tag over the topic and group too, so a
//! forged receipt, or one from another topic or group, is refused before it can touch
//! any state. The incarnation (the journal offset that created the group) and the
//! partition's seek count make a receipt from before a group was deleted and created
//! again, or before a seek restarted delivery counts, stale instead of valid for a new
//! delivery that happens to have the same number. The key lives in the data directory, so receipts stay
//! valid across broker restarts (leases do too).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const TAG_LEN: usize = 16;
const BODY_LEN: usize = 4 + 8 + 4 + 8 + 4;

/// The secret receipts are signed with.
#[derive(Clone)]
pub struct ReceiptKey(pub [u8; 32]);

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptKey(..)")
    }
}

/// What a receipt names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiptData {
    pub partition: u32,
    pub offset: u64,
    pub delivery: u32,
    /// The group's incarnation: the journal offset of the record that created it.
    pub incarnation: u64,
    /// Seeks of this group partition before the delivery.
    pub seeks: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    #[error("receipt is not valid base64url")]
    Encoding,
    #[error("receipt has the wrong length")]
    Length,
    #[error("receipt was not issued for this topic and group (forged or foreign)")]
    Signature,
}

impl ReceiptKey {
    /// The MAC over (topic, group, body), length-prefixed so no two inputs collide.
    fn mac(&self, topic: &str, group: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length works");
        for part in [topic.as_bytes(), group.as_bytes()] {
            mac.update(&(part.len() as u32).to_le_bytes());
            mac.update(part);
        }
        mac.update(body);
        mac
    }

    pub fn issue(&self, topic: &str, group: &str, d: ReceiptData) -> String {
        let mut bytes = Vec::with_capacity(BODY_LEN + TAG_LEN);
        bytes.extend_from_slice(&d.partition.to_le_bytes());
        bytes.extend_from_slice(&d.offset.to_le_bytes());
        bytes.extend_from_slice(&d.delivery.to_le_bytes());
        bytes.extend_from_slice(&d.incarnation.to_le_bytes());
        bytes.extend_from_slice(&d.seeks.to_le_bytes());
        let tag = self.mac(topic, group, &bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn verify(
        &self,
        topic: &str,
        group: &str,
        receipt: &str,
    ) -> Result<ReceiptData, ReceiptError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(receipt)
            .map_err(|_| ReceiptError::Encoding)?;
        if bytes.len() != BODY_LEN + TAG_LEN {
            return Err(ReceiptError::Length);
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        // Constant-time comparison of the truncated tag.
        self.mac(topic, group, body)
            .verify_truncated_left(tag)
            .map_err(|_| ReceiptError::Signature)?;
        Ok(ReceiptData {
            partition: u32::from_le_bytes(body[0..4].try_into().unwrap()),
            offset: u64::from_le_bytes(body[4..12].try_into().unwrap()),
            delivery: u32::from_le_bytes(body[12..16].try_into().unwrap()),
            incarnation: u64::from_le_bytes(body[16..24].try_into().unwrap()),
            seeks: u32::from_le_bytes(body[24..28].try_into().unwrap()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_receipts_verify_only_for_their_topic_and_group() {
        let k = ReceiptKey([7; 32]);
        let d = ReceiptData {
            partition: 2,
            offset: 99,
            delivery: 3,
            incarnation: 12,
            seeks: 1,
        };
        let r = k.issue("orders", "billing", d);
        assert_eq!(k.verify("orders", "billing", &r), Ok(d));
        assert_eq!(
            k.verify("orders", "shipping", &r),
            Err(ReceiptError::Signature)
        );
        assert_eq!(
            k.verify("order", "sbilling", &r),
            Err(ReceiptError::Signature)
        );
        assert_eq!(
            ReceiptKey([8; 32]).verify("orders", "billing", &r),
            Err(ReceiptError::Signature)
        );
        assert_eq!(
            k.verify("orders", "billing", "!!"),
            Err(ReceiptError::Encoding)
        );
        assert_eq!(
            k.verify("orders", "billing", "AAAA"),
            Err(ReceiptError::Length)
        );
        // Any single changed character is refused.
        let mut chars: Vec<char> = r.chars().collect();
        chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
        let forged: String = chars.into_iter().collect();
        assert!(k.verify("orders", "billing", &forged).is_err());
    }
}
