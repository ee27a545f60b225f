//! The secrets part of the model (runbooks 000 and 002): what must never leak and what must
//! never change.
//!
//! - INV-NO-PLAINTEXT ([`check_no_plaintext`], [`SecretScanner`]): no payload plaintext or key
//!   material in any disk image, export or diagnostics bundle. The world names the byte images it
//!   can see and the secrets it knows; the scan reports where each secret was found.
//! - INV-NO-REGEN ([`NoRegen`], [`check_no_regen`]): an initialized vault key is never
//!   regenerated. The world reports what each node's vault holds (a key fingerprint) whenever it
//!   looks, and every explicit recovery; a fingerprint that changes is a violation, and so is a
//!   recovery that restores another key than the one initialized.

use std::collections::BTreeMap;

use crate::invariants::{NO_PLAINTEXT, NO_REGEN};
use crate::store::Judgement;

// ---------------------------------------------------------------------------------------------
// INV-NO-PLAINTEXT

/// Secrets shorter than this are not scanned: a short byte string turns up by chance in a few
/// megabytes of ciphertext, and a correct stack must never be reported. At 8 bytes a chance
/// match has probability about 2^-64 per offset.
pub const SECRET_BYTES_MIN: usize = 8;

/// Images are scanned in prefixes of this many bytes.
const PREFIX_BYTES: usize = 8;

/// Bits of the prefilter (a one-hash Bloom filter over the secrets' prefixes).
const FILTER_BITS_LOG2: u32 = 16;

/// Something that must not appear in any image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// What it is, for messages (`payload of client-1 op 7`, `aggregate key a-3`).
    pub label: String,
    pub bytes: Vec<u8>,
}

impl Secret {
    /// A payload's plaintext.
    pub fn plaintext(label: impl Into<String>, payload: &[u8]) -> Secret {
        Secret { label: label.into(), bytes: payload.to_vec() }
    }

    /// A raw key, and its lowercase and uppercase hex spellings (key material written as text
    /// is key material too).
    pub fn key(label: impl Into<String>, key: &[u8]) -> Vec<Secret> {
        let label = label.into();
        let lower = hex::encode(key);
        let upper = lower.to_uppercase();
        vec![
            Secret { label: label.clone(), bytes: key.to_vec() },
            Secret { label: format!("{label} (hex)"), bytes: lower.into_bytes() },
            Secret { label: format!("{label} (HEX)"), bytes: upper.into_bytes() },
        ]
    }
}

/// Where a secret was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// The image's name (`client-1:/data/events.db`, `export/runs.jsonl`, `diagnostics.zip`).
    pub image: String,
    /// The first offset at which it was found.
    pub offset: usize,
    /// The secret's label.
    pub secret: String,
    /// How many times it occurs in the image.
    pub occurrences: u64,
}

/// Finds secrets in byte images in one pass over each image: every secret is indexed by its
/// first 8 bytes; each offset of an image costs one hash and one bit test, and only offsets that
/// pass the filter look the prefix up and compare the whole secret.
#[derive(Debug, Clone)]
pub struct SecretScanner {
    secrets: Vec<Secret>,
    /// (index in `secrets`, offset in the secret) of each 8-byte piece of a secret that starts
    /// at offsets `0..stride`, by the piece (little-endian `u64`).
    by_prefix: BTreeMap<u64, Vec<(usize, usize)>>,
    /// Only every `stride`-th offset of an image is looked at: every secret is at least
    /// `stride + 7` bytes long, so each occurrence covers exactly one looked-at offset at which
    /// one of its indexed pieces starts.
    stride: usize,
    filter: Vec<u64>,
    /// Labels of the secrets too short to scan.
    skipped: Vec<String>,
}

fn filter_slot(prefix: u64) -> usize {
    (prefix.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - FILTER_BITS_LOG2)) as usize
}

fn prefix_of(bytes: &[u8]) -> u64 {
    let mut p = [0u8; PREFIX_BYTES];
    p.copy_from_slice(&bytes[..PREFIX_BYTES]);
    u64::from_le_bytes(p)
}

impl SecretScanner {
    pub fn new(secrets: Vec<Secret>) -> SecretScanner {
        let mut s =
            SecretScanner { secrets: Vec::new(), by_prefix: BTreeMap::new(), stride: 1, filter: vec![0; 1 << (FILTER_BITS_LOG2 - 6)], skipped: Vec::new() };
        for secret in secrets {
            if secret.bytes.len() < SECRET_BYTES_MIN {
                s.skipped.push(secret.label);
            } else {
                s.secrets.push(secret);
            }
        }
        s.stride = s.secrets.iter().map(|x| x.bytes.len() - PREFIX_BYTES + 1).min().unwrap_or(1);
        for (i, secret) in s.secrets.iter().enumerate() {
            for k in 0..s.stride {
                let piece = prefix_of(&secret.bytes[k..]);
                let slot = filter_slot(piece);
                s.filter[slot / 64] |= 1 << (slot % 64);
                s.by_prefix.entry(piece).or_default().push((i, k));
            }
        }
        s
    }

    /// Whether this scanner looks for exactly `secrets` (in that order, skipped ones included).
    pub fn looks_for(&self, secrets: &[Secret]) -> bool {
        self.secrets.len() + self.skipped.len() == secrets.len() && {
            let mut kept = self.secrets.iter();
            let mut short = self.skipped.iter();
            secrets.iter().all(|x| if x.bytes.len() < SECRET_BYTES_MIN { short.next() == Some(&x.label) } else { kept.next() == Some(x) })
        }
    }

    /// Whether there is any secret to look for.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Labels of the secrets too short to scan for (see [`SECRET_BYTES_MIN`]).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Every secret found in `image`, with its first offset and its number of occurrences,
    /// ordered by first offset.
    pub fn scan(&self, name: &str, image: &[u8]) -> Vec<Finding> {
        let mut found: BTreeMap<usize, (usize, u64)> = BTreeMap::new();
        if self.secrets.is_empty() || image.len() < PREFIX_BYTES {
            return Vec::new();
        }
        for at in (0..=image.len() - PREFIX_BYTES).step_by(self.stride) {
            let piece = prefix_of(&image[at..]);
            let slot = filter_slot(piece);
            if self.filter[slot / 64] & (1 << (slot % 64)) == 0 {
                continue;
            }
            let Some(candidates) = self.by_prefix.get(&piece) else { continue };
            for &(i, k) in candidates {
                let Some(start) = at.checked_sub(k) else { continue };
                if image[start..].starts_with(&self.secrets[i].bytes) {
                    let e = found.entry(i).or_insert((start, 0));
                    e.0 = e.0.min(start);
                    e.1 += 1;
                }
            }
        }
        let mut out: Vec<Finding> = found
            .into_iter()
            .map(|(i, (offset, occurrences))| Finding { image: name.into(), offset, secret: self.secrets[i].label.clone(), occurrences })
            .collect();
        out.sort();
        out
    }
}

/// Every secret found in every image.
pub fn scan(images: &[(String, &[u8])], secrets: &[Secret]) -> Vec<Finding> {
    let scanner = SecretScanner::new(secrets.to_vec());
    images.iter().flat_map(|(name, bytes)| scanner.scan(name, bytes)).collect()
}

/// INV-NO-PLAINTEXT: no secret in any image. `node` is the node whose images these are (or
/// `world`), `line` the trace line of the scan. Non-vacuous when there was an image and a
/// secret long enough to scan for.
pub fn check_no_plaintext(node: &str, line: u64, images: &[(String, &[u8])], secrets: &[Secret]) -> Judgement {
    check_no_plaintext_with(&SecretScanner::new(secrets.to_vec()), node, line, images)
}

/// [`check_no_plaintext`] with a scanner already built for the secrets (the end of a run scans
/// every node's images for the same secrets).
pub fn check_no_plaintext_with(scanner: &SecretScanner, node: &str, line: u64, images: &[(String, &[u8])]) -> Judgement {
    let mut j = Judgement::default();
    if scanner.is_empty() || images.iter().all(|(_, b)| b.is_empty()) {
        return j;
    }
    j.check(NO_PLAINTEXT);
    for (name, bytes) in images {
        for f in scanner.scan(name, bytes) {
            let times = if f.occurrences > 1 { format!(" ({} times)", f.occurrences) } else { String::new() };
            j.violate(
                NO_PLAINTEXT,
                node,
                line,
                format!("{} found in {} at offset {}{times}: expected no plaintext or key material", f.secret, f.image, f.offset),
            );
        }
    }
    j
}

// ---------------------------------------------------------------------------------------------
// INV-NO-REGEN

/// What the world saw of a node's vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultObservation {
    /// The node's vault was read: the fingerprint of its vault key, or `None` when it holds no
    /// key (never initialized, or the key is missing and awaits recovery from a peer).
    Read { node: String, line: u64, fingerprint: Option<String> },
    /// An explicit, allowed recovery (a peer's share, a key backup) put this key in the vault.
    Recovered { node: String, line: u64, fingerprint: String },
}

/// What the model knows of vaults: the key each node's vault was first seen to hold.
#[derive(Debug, Clone, Default)]
pub struct NoRegen {
    /// Per node: the initialized fingerprint and the line it was first seen at.
    initialized: BTreeMap<String, (String, u64)>,
    /// Per node: other fingerprints already reported, so a changed key is reported once.
    reported: BTreeMap<String, Vec<String>>,
}

impl NoRegen {
    pub fn new() -> NoRegen {
        NoRegen::default()
    }

    /// Takes one observation. Non-vacuous when the node's vault key was already known.
    pub fn observe(&mut self, o: &VaultObservation) -> Judgement {
        let mut j = Judgement::default();
        let (node, line, fingerprint, recovered) = match o {
            VaultObservation::Read { fingerprint: None, .. } => return j,
            VaultObservation::Read { node, line, fingerprint: Some(f) } => (node, *line, f, false),
            VaultObservation::Recovered { node, line, fingerprint } => (node, *line, fingerprint, true),
        };
        let Some((first, since)) = self.initialized.get(node).cloned() else {
            self.initialized.insert(node.clone(), (fingerprint.clone(), line));
            return j;
        };
        j.check(NO_REGEN);
        if *fingerprint == first {
            return j;
        }
        let seen = self.reported.entry(node.clone()).or_default();
        if seen.contains(fingerprint) {
            return j;
        }
        seen.push(fingerprint.clone());
        let how = if recovered { "a recovery restored" } else { "the vault now holds" };
        j.violate(NO_REGEN, node, line, format!("vault key {first} initialized (seen at line {since}) was regenerated: {how} {fingerprint}, expected {first}"));
        j
    }
}

/// INV-NO-REGEN over a whole history, in trace order.
pub fn check_no_regen(history: &[VaultObservation]) -> Judgement {
    let mut model = NoRegen::new();
    let mut j = Judgement::default();
    for o in history {
        j.merge(model.observe(o));
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scanner_knows_the_exact_list_it_looks_for() {
        let list = vec![Secret::plaintext("long", b"0123456789abcdef"), Secret::plaintext("short", b"abc"), Secret::plaintext("other", b"fedcba9876543210")];
        let scanner = SecretScanner::new(list.clone());
        assert!(scanner.looks_for(&list));
        let mut changed = list.clone();
        changed[2].bytes[0] ^= 1;
        assert!(!scanner.looks_for(&changed), "a changed secret");
        assert!(!scanner.looks_for(&list[..2]), "a shorter list");
        let mut relabelled = list.clone();
        relabelled[1].label = "renamed".into();
        assert!(!scanner.looks_for(&relabelled), "a skipped secret is compared by its label");
        let mut longer = list.clone();
        longer.push(Secret::plaintext("more", b"more more more"));
        assert!(!scanner.looks_for(&longer), "a longer list");
    }

    #[test]
    fn the_model_scans_each_image_with_the_list_of_its_own_fact() {
        use crate::store::{StoreFact, StoreModel};
        let secret = Secret::plaintext("payload", b"a payload the disk must not hold");
        let mut m = StoreModel::new();
        let scan = |secrets: Vec<Secret>| StoreFact::Scan {
            node: "n".into(),
            images: vec![("n:/db".into(), b"xx a payload the disk must not hold xx".to_vec())],
            secrets,
        };
        assert!(m.observe(&scan(vec![secret.clone()]), 1).violations.len() == 1);
        assert!(m.observe(&scan(vec![Secret::plaintext("other", b"something else entirely")]), 2).violations.is_empty(), "a new list, a new scanner");
        assert!(m.observe(&scan(vec![secret]), 3).violations.len() == 1, "and back");
    }

    /// Every occurrence, found by looking at every offset: what the strided scan must agree with.
    fn naive(image: &[u8], secrets: &[Secret]) -> Vec<(String, usize, u64)> {
        let mut out = Vec::new();
        for s in secrets.iter().filter(|s| s.bytes.len() >= SECRET_BYTES_MIN) {
            let hits: Vec<usize> = (0..image.len()).filter(|&o| image[o..].starts_with(&s.bytes)).collect();
            if let Some(&first) = hits.first() {
                out.push((s.label.clone(), first, hits.len() as u64));
            }
        }
        out.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        out
    }

    #[test]
    fn the_strided_scan_finds_exactly_what_every_offset_would() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200 {
            // Secrets of 8 to 40 bytes over a small alphabet, so they overlap and repeat.
            let secrets: Vec<Secret> = (0..1 + next() % 6)
                .map(|i| {
                    let len = 8 + (next() % 33) as usize;
                    Secret { label: format!("s{round}-{i}"), bytes: (0..len).map(|_| b'a' + (next() % 3) as u8).collect() }
                })
                .collect();
            let mut image: Vec<u8> = (0..(next() % 600) as usize).map(|_| b'a' + (next() % 4) as u8).collect();
            for s in &secrets {
                if image.len() > s.bytes.len() && next() % 2 == 0 {
                    let at = (next() as usize) % (image.len() - s.bytes.len());
                    image[at..at + s.bytes.len()].copy_from_slice(&s.bytes);
                }
            }
            let mut got: Vec<(String, usize, u64)> =
                SecretScanner::new(secrets.clone()).scan("img", &image).into_iter().map(|f| (f.secret, f.offset, f.occurrences)).collect();
            got.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
            assert_eq!(got, naive(&image, &secrets), "round {round}");
        }
    }
}
