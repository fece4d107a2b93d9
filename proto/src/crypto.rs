//! Session cryptography of the PoV device protocol, version 2 (`docs/security.md`,
//! "Sessions"; `docs/protocol.md`, "Authentication").
//!
//! The channel a PoV device offers has one asymmetry every choice here builds on: what
//! a process WRITEs reaches only the device (reads of request space return zeros), while
//! what the device puts in response space any process that can open the device may
//! READ. So:
//!
//! * **Session open** is a challenge-response: the client's *Hello* carries a 32-byte
//!   client nonce `Nc` (private: only the device sees it); the device answers a 32-byte
//!   device nonce `Nd`; the client's *OpenSession* carries
//!   `HMAC-SHA256(secret, "pov/v2/open" ‖ tenant ‖ Nc ‖ Nd ‖ pid ‖ grant)` ([`open_proof`]).
//!   The secret never crosses the channel.
//! * **Session keys** ([`SessionKeys::derive`]): HKDF-SHA256 with the tenant secret as
//!   input key material, `Nc ‖ Nd` as salt and `"pov/v2/session" ‖ tenant ‖ session ID`
//!   as info, expanded to an AES-256-GCM key per direction and an HMAC-SHA256 key for
//!   admin requests. A process of the same tenant knows the secret but never sees
//!   `Nc`, so it cannot derive another session's keys.
//! * **IO requests** are sealed with the client-to-device key and a nonce made of the
//!   queue ID and the request ID ([`SessionKeys::seal_request`]): payload encrypted,
//!   header (tag field zeroed) authenticated, the 16-byte tag in the header; the device refuses a request
//!   whose tag does not verify or whose request ID is not above the queue's last one
//!   (replay, reorder).
//! * **IO responses** are sealed with the device-to-client key and the same nonce
//!   ([`SessionKeys::seal_response`]): payload encrypted in place, header
//!   authenticated ([`Protection::Confidential`]), or only authenticated
//!   ([`Protection::IntegrityOnly`], for tenants whose containers trust each other).
//! * **Admin answers** go to a mailbox the client names, sealed with a one-time
//!   exchange key the client sent in its (private) request ([`seal_mailbox`]); an
//!   authenticated admin request (queues, heartbeat, close) carries an HMAC with the
//!   session's admin key ([`SessionKeys::mac_admin`]).
//!
//! Algorithms: AES-256-GCM, HMAC-SHA256 and HKDF-SHA256 (RFC 5869) from `ring`.

use crate::layout::HEADER_SIZE;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// Bytes of an AES-256-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a nonce of the session open (`Nc`, `Nd`) and of an exchange key.
pub const NONCE_LEN: usize = 32;
/// Bytes of an admin MAC and of the open proof (HMAC-SHA256, untruncated).
pub const MAC_LEN: usize = 32;

/// How a session's responses are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Protection {
    /// Payloads encrypted and every response authenticated (the default).
    #[default]
    Confidential = 0,
    /// Responses authenticated, payloads in clear: any process that can open the device
    /// can read them (for tenants whose containers trust each other).
    IntegrityOnly = 1,
}

/// Fills `out` with bytes from the system's CSPRNG.
///
/// # Panics
/// If the operating system's random source fails (no safe way to go on).
pub fn random_fill(out: &mut [u8]) {
    SystemRandom::new().fill(out).expect("the system random source failed");
}

/// `N` random bytes (see [`random_fill`]).
pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    random_fill(&mut b);
    b
}

/// The proof of an OpenSession: `HMAC-SHA256(secret, "pov/v2/open" ‖ len(tenant) ‖
/// tenant ‖ Nc ‖ Nd ‖ pid (le32) ‖ grant flags ‖ len(prefix) (le16) ‖ prefix)`, so a
/// proof is bound to its exchange and to the grant it asks for.
pub fn open_proof(
    secret: &[u8],
    tenant: &str,
    nc: &[u8; NONCE_LEN],
    nd: &[u8; NONCE_LEN],
    pid: u32,
    grant_flags: u8,
    prefix: &str,
) -> [u8; MAC_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut c = hmac::Context::with_key(&key);
    c.update(b"pov/v2/open");
    c.update(&[tenant.len() as u8]);
    c.update(tenant.as_bytes());
    c.update(nc);
    c.update(nd);
    c.update(&pid.to_le_bytes());
    c.update(&[grant_flags]);
    c.update(&(prefix.len() as u16).to_le_bytes());
    c.update(prefix.as_bytes());
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(c.sign().as_ref());
    out
}

/// Constant-time comparison of two MACs of equal length.
pub fn macs_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a sealed record did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed: the record was not sealed with this key and nonce")]
pub struct Unauthentic;

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The keys of one session (see the module docs). Both ends hold the same value.
pub struct SessionKeys {
    c2d: LessSafeKey,
    d2c: LessSafeKey,
    admin: hmac::Key,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// The 96-bit AES-GCM nonce of request (or response) `request_id` on `queue`: queue ID
/// (le32) then request ID (le64). Unique per key because request IDs of a queue only
/// grow and each direction has its own key.
fn io_nonce(queue: u32, request_id: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&queue.to_le_bytes());
    n[4..].copy_from_slice(&request_id.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

impl SessionKeys {
    /// Derives the keys of session `session_id` of `tenant` from the tenant `secret`
    /// and the exchange's nonces (HKDF-SHA256, RFC 5869).
    pub fn derive(secret: &[u8], nc: &[u8; NONCE_LEN], nd: &[u8; NONCE_LEN], tenant: &str, session_id: u64) -> SessionKeys {
        let mut salt = [0u8; 2 * NONCE_LEN];
        salt[..NONCE_LEN].copy_from_slice(nc);
        salt[NONCE_LEN..].copy_from_slice(nd);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(secret);
        let sid = session_id.to_le_bytes();
        let info: [&[u8]; 3] = [b"pov/v2/session", tenant.as_bytes(), &sid];
        let mut okm = [0u8; 96];
        prk.expand(&info, Len(okm.len())).and_then(|o| o.fill(&mut okm)).expect("96 bytes is a valid HKDF-SHA256 length");
        let aes = |k: &[u8]| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("32-byte AES-256 key"));
        let keys =
            SessionKeys { c2d: aes(&okm[..32]), d2c: aes(&okm[32..64]), admin: hmac::Key::new(hmac::HMAC_SHA256, &okm[64..]) };
        okm.fill(0);
        keys
    }

    /// Seals an IO request in place: `buf` is the header ([`HEADER_SIZE`] bytes, or all
    /// of `buf` if shorter: authenticated) followed by the payload (encrypted); the tag
    /// goes to `buf[tag_at..tag_at + 16]` (zeroed while computing).
    ///
    /// Encrypting the payload is also the fast way to authenticate it: `ring` runs
    /// AES-GCM encryption with its VAES/AVX-512 kernel (7.9 GB/s on the CI machine) but
    /// authenticates additional data with plain GHASH (2.1 GB/s), so tagging 1 MiB as
    /// additional data costs 500 µs and encrypting it 133 µs (docs/performance.md).
    pub fn seal_request(&self, queue: u32, request_id: u64, buf: &mut [u8], tag_at: usize) {
        buf[tag_at..tag_at + TAG_LEN].fill(0);
        let (head, payload) = buf.split_at_mut(HEADER_SIZE.min(buf.len()));
        let tag = self.c2d.seal_in_place_separate_tag(io_nonce(queue, request_id), Aad::from(&*head), payload);
        buf[tag_at..tag_at + TAG_LEN].copy_from_slice(tag.expect("AES-GCM sealing of ≤ 1 MiB cannot fail").as_ref());
    }

    /// Opens an IO request sealed by [`SessionKeys::seal_request`] in place (the payload
    /// decrypted); the tag field is left zeroed.
    ///
    /// # Errors
    /// [`Unauthentic`] if the tag does not verify (the payload is then garbage).
    pub fn open_request(&self, queue: u32, request_id: u64, buf: &mut [u8], tag_at: usize) -> Result<(), Unauthentic> {
        let tag = take_tag(buf, tag_at);
        let (head, payload) = buf.split_at_mut(HEADER_SIZE.min(buf.len()));
        self.c2d
            .open_in_place_separate_tag(io_nonce(queue, request_id), Aad::from(&*head), tag, payload, 0..)
            .map(|_| ())
            .map_err(|_| Unauthentic)
    }

    /// Seals an IO response in place: `buf[..header_len]` is the header (authenticated;
    /// its tag field `tag_at..tag_at + 16` is zeroed first, then set), the rest is the
    /// payload: encrypted with [`Protection::Confidential`]; left in clear with
    /// [`Protection::IntegrityOnly`], the tag then being the AES-GCM tag of the payload
    /// encrypted in a scratch copy (see [`SessionKeys::open_response`]).
    pub fn seal_response(&self, queue: u32, request_id: u64, buf: &mut [u8], header_len: usize, tag_at: usize, p: Protection) {
        buf[tag_at..tag_at + TAG_LEN].fill(0);
        let tag = self.response_tag(queue, request_id, buf, header_len, p);
        buf[tag_at..tag_at + TAG_LEN].copy_from_slice(tag.as_ref());
    }

    /// Opens an IO response sealed by [`SessionKeys::seal_response`] in place
    /// (decrypting the payload with [`Protection::Confidential`]).
    ///
    /// An integrity-only response is checked by encrypting a copy of its payload and
    /// comparing the tags in constant time: a GCM tag is a function of the header and
    /// the ciphertext, and the ciphertext is never published, so this is at least as
    /// strong as AES-GCM with known plaintext, and about 3 times faster with `ring` here
    /// than authenticating the payload as additional data (copy + 7.9 GB/s encryption
    /// against 2.1 GB/s GHASH; docs/performance.md).
    ///
    /// # Errors
    /// [`Unauthentic`] if it was not sealed with this session's key for this queue and
    /// request (another session's response, a stale one, or tampered bytes).
    pub fn open_response(
        &self,
        queue: u32,
        request_id: u64,
        buf: &mut [u8],
        header_len: usize,
        tag_at: usize,
        p: Protection,
    ) -> Result<(), Unauthentic> {
        let tag = take_tag(buf, tag_at);
        match p {
            Protection::Confidential => {
                let (head, payload) = buf.split_at_mut(header_len);
                self.d2c
                    .open_in_place_separate_tag(io_nonce(queue, request_id), Aad::from(&*head), tag, payload, 0..)
                    .map(|_| ())
                    .map_err(|_| Unauthentic)
            }
            Protection::IntegrityOnly => {
                let want = self.response_tag(queue, request_id, buf, header_len, p);
                if macs_equal(want.as_ref(), tag.as_ref()) {
                    Ok(())
                } else {
                    Err(Unauthentic)
                }
            }
        }
    }

    /// The tag of a response (its tag field zeroed): AES-GCM over the header and the
    /// payload, encrypting the payload in place (confidential) or in a scratch copy
    /// (integrity-only).
    fn response_tag(&self, queue: u32, request_id: u64, buf: &mut [u8], header_len: usize, p: Protection) -> Tag {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let nonce = io_nonce(queue, request_id);
        let (head, payload) = buf.split_at_mut(header_len);
        let tag = match p {
            Protection::Confidential => self.d2c.seal_in_place_separate_tag(nonce, Aad::from(&*head), payload),
            Protection::IntegrityOnly => SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                s.clear();
                s.extend_from_slice(payload);
                self.d2c.seal_in_place_separate_tag(nonce, Aad::from(&*head), &mut s[..])
            }),
        };
        tag.expect("AES-GCM sealing of ≤ 1 MiB cannot fail")
    }

    /// The MAC of an authenticated admin request record (its MAC field
    /// `mac_at..mac_at + 32` zeroed while computing), written into that field.
    pub fn mac_admin(&self, record: &mut [u8], mac_at: usize) {
        record[mac_at..mac_at + MAC_LEN].fill(0);
        let tag = hmac::sign(&self.admin, record);
        record[mac_at..mac_at + MAC_LEN].copy_from_slice(tag.as_ref());
    }

    /// Verifies an admin record's MAC (see [`SessionKeys::mac_admin`]); the field is
    /// left zeroed.
    ///
    /// # Errors
    /// [`Unauthentic`] if it does not verify.
    pub fn verify_admin(&self, record: &mut [u8], mac_at: usize) -> Result<(), Unauthentic> {
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&record[mac_at..mac_at + MAC_LEN]);
        record[mac_at..mac_at + MAC_LEN].fill(0);
        hmac::verify(&self.admin, record, &mac).map_err(|_| Unauthentic)
    }
}

/// Copies the tag out of `buf[at..at + 16]` and zeroes the field.
fn take_tag(buf: &mut [u8], at: usize) -> Tag {
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&buf[at..at + TAG_LEN]);
    buf[at..at + TAG_LEN].fill(0);
    Tag::from(t)
}

/// Seals an admin answer for a mailbox in place: `rec[..aad_len]` is authenticated,
/// `rec[aad_len..rec.len() - 16]` encrypted, the tag written at the end, all with the
/// one-time exchange key the request carried (used for this one record: nonce 0).
pub fn seal_mailbox(exchange_key: &[u8; NONCE_LEN], rec: &mut [u8], aad_len: usize) {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, exchange_key).expect("32-byte key"));
    let end = rec.len() - TAG_LEN;
    let (head, rest) = rec.split_at_mut(aad_len);
    let (body, tag_out) = rest.split_at_mut(end - aad_len);
    let tag = key.seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(&*head), body);
    tag_out.copy_from_slice(tag.expect("sealing a mailbox cannot fail").as_ref());
}

/// Opens a mailbox record sealed by [`seal_mailbox`] in place.
///
/// # Errors
/// [`Unauthentic`] if it was not sealed with `exchange_key` (another exchange's answer,
/// or nothing yet).
pub fn open_mailbox(exchange_key: &[u8; NONCE_LEN], rec: &mut [u8], aad_len: usize) -> Result<(), Unauthentic> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, exchange_key).expect("32-byte key"));
    let end = rec.len() - TAG_LEN;
    let tag = Tag::try_from(&rec[end..]).map_err(|_| Unauthentic)?;
    let (head, rest) = rec.split_at_mut(aad_len);
    key.open_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(&*head), tag, &mut rest[..end - aad_len], 0..)
        .map(|_| ())
        .map_err(|_| Unauthentic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &[u8], nc: u8, sid: u64) -> SessionKeys {
        SessionKeys::derive(secret, &[nc; 32], &[9; 32], "acme", sid)
    }

    #[test]
    fn requests_verify_only_with_the_same_keys_queue_and_id() {
        let (a, b) = (keys(b"s", 1, 7), keys(b"s", 1, 7));
        let mut buf = vec![0x5au8; 512 + 4096];
        a.seal_request(3, 10, &mut buf, 128);
        let good = buf.clone();
        assert!(b.open_request(3, 10, &mut buf.clone(), 128).is_ok(), "same derivation, same keys");
        assert!(b.open_request(3, 11, &mut buf.clone(), 128).is_err(), "another request ID");
        assert!(b.open_request(4, 10, &mut buf.clone(), 128).is_err(), "another queue");
        assert!(keys(b"s", 2, 7).open_request(3, 10, &mut buf.clone(), 128).is_err(), "another client nonce");
        assert!(keys(b"s", 1, 8).open_request(3, 10, &mut buf.clone(), 128).is_err(), "another session");
        assert!(keys(b"t", 1, 7).open_request(3, 10, &mut buf.clone(), 128).is_err(), "another secret");
        buf[600] ^= 1;
        assert!(b.open_request(3, 10, &mut buf, 128).is_err(), "a payload bit flipped");
        let mut g = good;
        assert!(g[512..] != [0x5au8; 4096][..], "the payload travels encrypted");
        assert!(b.open_request(3, 10, &mut g, 128).is_ok());
        assert!(g[128..144].iter().all(|x| *x == 0), "tag field left zeroed");
        assert!(g[512..].iter().all(|x| *x == 0x5a), "and opens to what was sealed");
    }

    #[test]
    fn responses_round_trip_in_both_modes_and_stay_secret_when_confidential() {
        let k = keys(b"s", 1, 7);
        for p in [Protection::Confidential, Protection::IntegrityOnly] {
            let plain: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
            let mut buf = vec![0u8; 512];
            buf[..4].copy_from_slice(b"PoVR");
            buf.extend_from_slice(&plain);
            k.seal_response(5, 42, &mut buf, 512, 48, p);
            let hidden = buf[512..] != plain[..];
            assert_eq!(hidden, p == Protection::Confidential, "{p:?}");
            assert!(keys(b"s", 2, 7).open_response(5, 42, &mut buf.clone(), 512, 48, p).is_err(), "other session");
            assert!(k.open_response(5, 43, &mut buf.clone(), 512, 48, p).is_err(), "other request");
            let mut t = buf.clone();
            t[3] ^= 1;
            assert!(k.open_response(5, 42, &mut t, 512, 48, p).is_err(), "header tampered");
            k.open_response(5, 42, &mut buf, 512, 48, p).unwrap();
            assert_eq!(&buf[512..], &plain[..]);
        }
    }

    #[test]
    fn admin_macs_and_mailboxes() {
        let k = keys(b"s", 1, 7);
        let mut rec = vec![3u8; 1024];
        k.mac_admin(&mut rec, 112);
        let mut r2 = rec.clone();
        assert!(k.verify_admin(&mut r2, 112).is_ok());
        rec[0] ^= 1;
        assert!(k.verify_admin(&mut rec, 112).is_err());
        let key = [4u8; 32];
        let mut m = vec![1u8; 512];
        seal_mailbox(&key, &mut m, 8);
        assert!(m[8..400].iter().any(|x| *x != 1), "the body is encrypted");
        assert!(open_mailbox(&[5u8; 32], &mut m.clone(), 8).is_err(), "another exchange");
        open_mailbox(&key, &mut m, 8).unwrap();
        assert!(m[..512 - 16].iter().all(|x| *x == 1));
    }

    #[test]
    fn proofs_bind_every_input() {
        let base = open_proof(b"s", "acme", &[1; 32], &[2; 32], 7, 0, "");
        assert_eq!(base, open_proof(b"s", "acme", &[1; 32], &[2; 32], 7, 0, ""));
        for other in [
            open_proof(b"t", "acme", &[1; 32], &[2; 32], 7, 0, ""),
            open_proof(b"s", "acmf", &[1; 32], &[2; 32], 7, 0, ""),
            open_proof(b"s", "acme", &[3; 32], &[2; 32], 7, 0, ""),
            open_proof(b"s", "acme", &[1; 32], &[3; 32], 7, 0, ""),
            open_proof(b"s", "acme", &[1; 32], &[2; 32], 8, 0, ""),
            open_proof(b"s", "acme", &[1; 32], &[2; 32], 7, 1, ""),
            open_proof(b"s", "acme", &[1; 32], &[2; 32], 7, 0, "/a"),
        ] {
            assert!(!macs_equal(&base, &other));
        }
        assert!(macs_equal(&base, &base));
        assert!(!macs_equal(&base, &base[..31]));
    }
}
