//! Group keys with epochs (runbook 002, "Missing Group Key (GSK)").
//!
//! Each epoch of a group has its own key. A packet under an epoch whose key has not arrived yet
//! is not an error: it waits in a bounded buffer and is replayed, in arrival order, when that
//! epoch's key arrives. The buffer's limit is explicit; a packet that finds it full is dropped
//! and reported as `keys:groupBufferOverflow`, so growth is visible rather than unbounded.

use std::collections::{BTreeMap, VecDeque};

use rand_core::RngCore;

use crate::crypto::{self, Key, Nonce};

use super::keystore::KeyStore;
use super::KeyError;

/// One packet sealed under a group's epoch key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPacket {
    pub group: String,
    pub epoch: u64,
    pub nonce: Nonce,
    pub ciphertext: Vec<u8>,
}

fn packet_aad(group: &str, epoch: u64) -> Vec<u8> {
    crypto::framed(&[b"drill-group-packet-v1", group.as_bytes(), &epoch.to_le_bytes()])
}

impl GroupPacket {
    /// Seals `plaintext` for `group` under `epoch`'s key.
    pub fn seal(group: &str, epoch: u64, key: &Key, nonce: Nonce, plaintext: &[u8]) -> GroupPacket {
        let ciphertext = crypto::seal(key, &nonce, &packet_aad(group, epoch), plaintext);
        GroupPacket { group: group.into(), epoch, nonce, ciphertext }
    }

    fn open(&self, key: &Key) -> Result<Vec<u8>, KeyError> {
        crypto::open(key, &self.nonce, &packet_aad(&self.group, self.epoch), &self.ciphertext)
            .map_err(|_| KeyError::GroupPacketRejected { group: self.group.clone(), epoch: self.epoch })
    }
}

/// What became of a received packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Its epoch's key was here: the plaintext.
    Delivered(Vec<u8>),
    /// Its epoch is unknown: it waits, with this many packets now buffered.
    Buffered { buffered: usize },
}

/// One member's view of a group: the epoch keys it holds and the packets waiting for keys.
#[derive(Debug)]
pub struct GroupSession {
    group: String,
    keys: BTreeMap<u64, Key>,
    buffer: VecDeque<GroupPacket>,
    buffer_max: usize,
}

impl GroupSession {
    /// A session for `group` that buffers at most `buffer_max` packets.
    pub fn new(group: &str, buffer_max: usize) -> GroupSession {
        GroupSession { group: group.into(), keys: BTreeMap::new(), buffer: VecDeque::new(), buffer_max }
    }

    /// A session with the epoch keys `ks` holds for `group`.
    pub fn load(ks: &KeyStore, group: &str, buffer_max: usize) -> Result<GroupSession, KeyError> {
        let mut s = GroupSession::new(group, buffer_max);
        s.keys = ks.group_keys(group)?;
        Ok(s)
    }

    /// The newest epoch whose key is here.
    pub fn current_epoch(&self) -> Option<u64> {
        self.keys.keys().next_back().copied()
    }

    /// The key of `epoch`, if here.
    pub fn key(&self, epoch: u64) -> Option<&Key> {
        self.keys.get(&epoch)
    }

    /// Packets waiting for an epoch key.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Receives one packet: delivered if its epoch's key is here, buffered if not, and
    /// `keys:groupBufferOverflow` (the packet dropped) if the buffer is full. A packet that does
    /// not open under a known key is `keys:groupPacketRejected`.
    pub fn receive(&mut self, packet: GroupPacket) -> Result<Received, KeyError> {
        if packet.group != self.group {
            return Err(KeyError::GroupPacketRejected { group: packet.group, epoch: packet.epoch });
        }
        if let Some(key) = self.keys.get(&packet.epoch) {
            return packet.open(key).map(Received::Delivered);
        }
        if self.buffer.len() >= self.buffer_max {
            return Err(KeyError::GroupBufferOverflow { group: packet.group, epoch: packet.epoch, capacity: self.buffer_max });
        }
        self.buffer.push_back(packet);
        Ok(Received::Buffered { buffered: self.buffer.len() })
    }

    /// Adds `epoch`'s key and replays the packets that waited for it, in arrival order; each
    /// result is that packet's plaintext or why it did not open. Packets of other epochs wait on.
    pub fn add_epoch_key(&mut self, epoch: u64, key: Key) -> Vec<Result<Vec<u8>, KeyError>> {
        let (ready, waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.buffer).into_iter().partition(|p| p.epoch == epoch);
        self.buffer = waiting;
        let out = ready.iter().map(|p| p.open(&key)).collect();
        self.keys.insert(epoch, key);
        out
    }
}

fn group_entry(group: &str, epoch: u64) -> String {
    // Zero-padded so that names sort in epoch order.
    format!("group/{group}/{epoch:020}")
}

impl KeyStore {
    /// Stores `group`'s key for `epoch`.
    pub fn put_group_key(&mut self, group: &str, epoch: u64, key: &Key, rng: &mut dyn RngCore) -> Result<(), KeyError> {
        self.put(&group_entry(group, epoch), key, rng)
    }

    /// Every epoch key this store holds for `group`.
    pub fn group_keys(&self, group: &str) -> Result<BTreeMap<u64, Key>, KeyError> {
        let prefix = format!("group/{group}/");
        let names: Vec<String> = {
            let mut st = self.conn.prepare("SELECT name FROM wrapped WHERE substr(name, 1, ?2) = ?1 ORDER BY name")?;
            let rows = st.query_map(rusqlite::params![prefix, prefix.len() as i64], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = BTreeMap::new();
        for name in names {
            let Ok(epoch) = name[prefix.len()..].parse::<u64>() else { continue };
            if let Some(k) = self.get(&name)? {
                out.insert(epoch, k);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KdfParams;
    use rand_chacha::rand_core::SeedableRng;

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(9)
    }

    fn packet(r: &mut rand_chacha::ChaCha8Rng, key: &Key, epoch: u64, text: &[u8]) -> GroupPacket {
        GroupPacket::seal("room", epoch, key, crypto::nonce_from(r), text)
    }

    #[test]
    fn packets_under_an_unknown_epoch_wait_and_replay_in_order_when_the_key_arrives() {
        let mut r = rng();
        let (k1, k2) = (Key::generate(&mut r), Key::generate(&mut r));
        let mut s = GroupSession::new("room", 8);
        s.add_epoch_key(1, k1.clone());
        assert_eq!(s.receive(packet(&mut r, &k1, 1, b"one")).unwrap(), Received::Delivered(b"one".to_vec()));
        assert_eq!(s.receive(packet(&mut r, &k2, 2, b"two-a")).unwrap(), Received::Buffered { buffered: 1 });
        assert_eq!(s.receive(packet(&mut r, &k2, 2, b"two-b")).unwrap(), Received::Buffered { buffered: 2 });
        let k3 = Key::generate(&mut r);
        s.receive(packet(&mut r, &k3, 3, b"three")).unwrap();
        let replayed = s.add_epoch_key(2, k2);
        assert_eq!(replayed, vec![Ok(b"two-a".to_vec()), Ok(b"two-b".to_vec())]);
        assert_eq!(s.buffered(), 1, "epoch 3's packet still waits");
        assert_eq!(s.current_epoch(), Some(2));
    }

    #[test]
    fn a_full_buffer_reports_overflow_and_drops_the_packet() {
        let mut r = rng();
        let k = Key::generate(&mut r);
        let mut s = GroupSession::new("room", 2);
        s.receive(packet(&mut r, &k, 5, b"a")).unwrap();
        s.receive(packet(&mut r, &k, 5, b"b")).unwrap();
        let e = s.receive(packet(&mut r, &k, 5, b"c")).unwrap_err();
        assert_eq!(e, KeyError::GroupBufferOverflow { group: "room".into(), epoch: 5, capacity: 2 });
        assert_eq!(e.code(), "keys:groupBufferOverflow");
        assert_eq!(s.add_epoch_key(5, k), vec![Ok(b"a".to_vec()), Ok(b"b".to_vec())]);
    }

    #[test]
    fn a_packet_that_does_not_open_is_rejected() {
        let mut r = rng();
        let (k, wrong) = (Key::generate(&mut r), Key::generate(&mut r));
        let mut s = GroupSession::new("room", 2);
        s.add_epoch_key(1, k.clone());
        assert_eq!(s.receive(packet(&mut r, &wrong, 1, b"x")).unwrap_err().code(), "keys:groupPacketRejected");
        let mut p = packet(&mut r, &k, 1, b"x");
        p.epoch = 2;
        s.receive(p).unwrap();
        assert_eq!(s.add_epoch_key(2, k.clone()).pop().unwrap().unwrap_err().code(), "keys:groupPacketRejected");
        let other = GroupPacket::seal("other-room", 1, &k, crypto::nonce_from(&mut r), b"x");
        assert_eq!(s.receive(other).unwrap_err().code(), "keys:groupPacketRejected");
    }

    #[test]
    fn epoch_keys_persist_in_the_key_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng();
        let mut ks = KeyStore::create(dir.path().join("k.db").to_str().unwrap(), "p", KdfParams::sim(), &mut r).unwrap();
        let (k1, k10) = (Key::generate(&mut r), Key::generate(&mut r));
        ks.put_group_key("room", 10, &k10, &mut r).unwrap();
        ks.put_group_key("room", 1, &k1, &mut r).unwrap();
        ks.put_group_key("room-2", 1, &k10, &mut r).unwrap();
        let s = GroupSession::load(&ks, "room", 4).unwrap();
        assert_eq!(s.key(1), Some(&k1));
        assert_eq!(s.current_epoch(), Some(10));
        assert_eq!(ks.group_keys("room").unwrap().len(), 2);
    }
}
