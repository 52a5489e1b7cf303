//! Checks that snow, as configured for concentrator (ring-accelerated resolver), computes
//! `Noise_IKpsk2_25519_AESGCM_SHA256` (and plain `Noise_IK_25519_AESGCM_SHA256`) exactly as the
//! published cacophony test vectors say: every handshake and transport message byte for byte.
//!
//! The vectors' `handshake_hash` field is not Noise's final handshake hash (see `_note_handshake_hash`
//! in the JSON file), so the handshake hash and the `Split()` keys are checked against an
//! independent construction of the same handshake written from the Noise spec (rev. 34) on top of
//! ring (SHA-256, HMAC, AES-256-GCM) and bare X25519; that construction must also reproduce the
//! vectors' handshake messages. Origin and licence of the vectors: `_origin` and `_licence` in
//! `tests/vectors/cacophony_ik_aesgcm_sha256.json`.

use serde::Deserialize;
use snow::params::NoiseParams;
use snow::{Builder, HandshakeState};

const VECTORS: &str = include_str!("vectors/cacophony_ik_aesgcm_sha256.json");

/// The Noise wiki test-vector format (only the fields IK needs).
#[derive(Deserialize, Clone)]
struct File {
    vectors: Vec<Vector>,
}

#[derive(Deserialize, Clone)]
struct Vector {
    protocol_name: String,
    init_prologue: String,
    #[serde(default)]
    init_psks: Vec<String>,
    init_static: String,
    init_ephemeral: String,
    init_remote_static: String,
    resp_prologue: String,
    #[serde(default)]
    resp_psks: Vec<String>,
    resp_static: String,
    resp_ephemeral: String,
    messages: Vec<Message>,
}

#[derive(Deserialize, Clone)]
struct Message {
    payload: String,
    ciphertext: String,
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("bad hex in vector file"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key(s: &str) -> [u8; 32] {
    unhex(s).try_into().expect("keys are 32 bytes")
}

fn psk(list: &[String]) -> Option<[u8; 32]> {
    match list {
        [] => None,
        [one] => Some(key(one)),
        _ => panic!("IK vectors have at most one PSK"),
    }
}

/// Builds one side with snow. `remote` is only set for the initiator (IK: `<- s` is pre-known).
fn build(
    params: &NoiseParams,
    prologue: &[u8],
    psk: Option<&[u8; 32]>,
    local: &[u8],
    ephemeral: &[u8],
    remote: Option<&[u8]>,
) -> HandshakeState {
    let mut b = Builder::new(params.clone())
        .prologue(prologue)
        .unwrap()
        .local_private_key(local)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(ephemeral);
    if let Some(psk) = psk {
        // The `psk2` modifier: the PSK is mixed in at the end of the second message.
        b = b.psk(2, psk).unwrap();
    }
    match remote {
        Some(rs) => b.remote_public_key(rs).unwrap().build_initiator().unwrap(),
        None => b.build_responder().unwrap(),
    }
}

/// The independent construction: Noise spec rev. 34 sections 5.1 (CipherState), 5.2
/// (SymmetricState), 7 (IK pattern) and 9 (`psk` token, and `e` doing MixKey in PSK handshakes),
/// with SHA-256, HMAC-SHA256 and AES-256-GCM from ring and bare X25519 from x25519-dalek.
mod spec {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    use ring::{digest, hmac};
    use x25519_dalek::{x25519, X25519_BASEPOINT_BYTES};

    fn hash(parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for p in parts {
            ctx.update(p);
        }
        ctx.finish().as_ref().try_into().unwrap()
    }

    fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
        for p in parts {
            ctx.update(p);
        }
        ctx.sign().as_ref().try_into().unwrap()
    }

    /// HKDF as Noise defines it (section 4.3), three outputs.
    fn hkdf(ck: &[u8; 32], ikm: &[u8]) -> [[u8; 32]; 3] {
        let temp = hmac(ck, &[ikm]);
        let o1 = hmac(&temp, &[&[1]]);
        let o2 = hmac(&temp, &[&o1, &[2]]);
        let o3 = hmac(&temp, &[&o2, &[3]]);
        [o1, o2, o3]
    }

    pub fn public(secret: &[u8; 32]) -> [u8; 32] {
        x25519(*secret, X25519_BASEPOINT_BYTES)
    }

    pub struct Symmetric {
        ck: [u8; 32],
        pub h: [u8; 32],
        k: Option<[u8; 32]>,
        n: u64,
    }

    impl Symmetric {
        pub fn new(protocol_name: &str) -> Self {
            let name = protocol_name.as_bytes();
            // Names of at most HASHLEN bytes are zero-padded, longer ones hashed.
            let h = if name.len() <= 32 {
                let mut h = [0u8; 32];
                h[..name.len()].copy_from_slice(name);
                h
            } else {
                hash(&[name])
            };
            Self {
                ck: h,
                h,
                k: None,
                n: 0,
            }
        }

        pub fn mix_hash(&mut self, data: &[u8]) {
            self.h = hash(&[&self.h, data]);
        }

        pub fn mix_key(&mut self, ikm: &[u8]) {
            let [ck, k, _] = hkdf(&self.ck, ikm);
            self.ck = ck;
            self.k = Some(k);
            self.n = 0;
        }

        pub fn mix_key_and_hash(&mut self, ikm: &[u8]) {
            let [ck, temp_h, k] = hkdf(&self.ck, ikm);
            self.ck = ck;
            self.mix_hash(&temp_h);
            self.k = Some(k);
            self.n = 0;
        }

        pub fn dh(&mut self, secret: &[u8; 32], public: &[u8; 32]) {
            self.mix_key(&x25519(*secret, *public));
        }

        pub fn encrypt_and_hash(&mut self, plaintext: &[u8]) -> Vec<u8> {
            let mut out = plaintext.to_vec();
            if let Some(k) = self.k {
                // AESGCM nonce: 4 zero bytes then the counter big-endian (section 12.4).
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&self.n.to_be_bytes());
                LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).unwrap())
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(self.h),
                        &mut out,
                    )
                    .unwrap();
                self.n += 1;
            }
            self.mix_hash(&out);
            out
        }

        pub fn split(&self) -> ([u8; 32], [u8; 32]) {
            let [k1, k2, _] = hkdf(&self.ck, &[]);
            (k1, k2)
        }
    }

    /// The result of one IK / IKpsk2 handshake.
    pub struct Transcript {
        pub messages: [Vec<u8>; 2],
        pub handshake_hash: [u8; 32],
        pub split: ([u8; 32], [u8; 32]),
    }

    /// Runs the handshake knowing every private key (both parties share the symmetric state).
    #[allow(clippy::too_many_arguments)]
    pub fn ik(
        name: &str,
        prologue: &[u8],
        psk: Option<&[u8; 32]>,
        i_static: &[u8; 32],
        i_eph: &[u8; 32],
        r_static: &[u8; 32],
        r_eph: &[u8; 32],
        payloads: [&[u8]; 2],
    ) -> Transcript {
        let (i_static_pub, i_eph_pub) = (public(i_static), public(i_eph));
        let (r_static_pub, r_eph_pub) = (public(r_static), public(r_eph));
        let mut s = Symmetric::new(name);
        s.mix_hash(prologue);
        // Pre-message `<- s`.
        s.mix_hash(&r_static_pub);

        // -> e, es, s, ss
        let mut m1 = i_eph_pub.to_vec();
        s.mix_hash(&i_eph_pub);
        if psk.is_some() {
            s.mix_key(&i_eph_pub);
        }
        s.dh(i_eph, &r_static_pub);
        m1.extend(s.encrypt_and_hash(&i_static_pub));
        s.dh(i_static, &r_static_pub);
        m1.extend(s.encrypt_and_hash(payloads[0]));

        // <- e, ee, se, psk
        let mut m2 = r_eph_pub.to_vec();
        s.mix_hash(&r_eph_pub);
        if psk.is_some() {
            s.mix_key(&r_eph_pub);
        }
        s.dh(r_eph, &i_eph_pub);
        s.dh(r_eph, &i_static_pub);
        if let Some(psk) = psk {
            s.mix_key_and_hash(psk);
        }
        m2.extend(s.encrypt_and_hash(payloads[1]));

        Transcript {
            messages: [m1, m2],
            handshake_hash: s.h,
            split: s.split(),
        }
    }
}

fn run(v: &Vector) {
    let name = &v.protocol_name;
    let params: NoiseParams = name.parse().unwrap();
    let init_psk = psk(&v.init_psks);
    let resp_psk = psk(&v.resp_psks);
    assert_eq!(
        init_psk.is_some(),
        name.contains("psk2"),
        "{name}: PSK presence"
    );
    assert_eq!(init_psk, resp_psk, "{name}: both sides share the PSK");
    assert!(
        v.messages.len() > 2,
        "{name}: vector has transport messages"
    );

    let (i_prologue, i_static, i_eph, i_rs) = (
        unhex(&v.init_prologue),
        key(&v.init_static),
        key(&v.init_ephemeral),
        key(&v.init_remote_static),
    );
    let (r_prologue, r_static, r_eph) = (
        unhex(&v.resp_prologue),
        key(&v.resp_static),
        key(&v.resp_ephemeral),
    );
    assert_eq!(spec::public(&r_static), i_rs, "{name}: init_remote_static");

    // The independent construction must reproduce the published handshake messages too.
    let p0 = unhex(&v.messages[0].payload);
    let p1 = unhex(&v.messages[1].payload);
    let reference = spec::ik(
        name,
        &i_prologue,
        init_psk.as_ref(),
        &i_static,
        &i_eph,
        &r_static,
        &r_eph,
        [&p0, &p1],
    );
    for (i, m) in reference.messages.iter().enumerate() {
        assert_eq!(
            hex(m),
            v.messages[i].ciphertext,
            "{name}: reference message {i}"
        );
    }

    let mut init = build(
        &params,
        &i_prologue,
        init_psk.as_ref(),
        &i_static,
        &i_eph,
        Some(&i_rs),
    );
    let mut resp = build(
        &params,
        &r_prologue,
        resp_psk.as_ref(),
        &r_static,
        &r_eph,
        None,
    );

    let mut buf = vec![0u8; 65535];
    let mut out = vec![0u8; 65535];

    // Handshake: IK has two messages, initiator first.
    for (i, m) in v.messages[..2].iter().enumerate() {
        let (sender, receiver) = if i % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let payload = unhex(&m.payload);
        let n = sender.write_message(&payload, &mut buf).unwrap();
        assert_eq!(
            hex(&buf[..n]),
            m.ciphertext,
            "{name}: handshake message {i}"
        );
        let k = receiver.read_message(&buf[..n], &mut out).unwrap();
        assert_eq!(
            &out[..k],
            &payload[..],
            "{name}: handshake message {i} payload"
        );
    }
    assert!(init.is_handshake_finished() && resp.is_handshake_finished());
    for (side, hs) in [("initiator", &init), ("responder", &resp)] {
        assert_eq!(
            hex(hs.get_handshake_hash()),
            hex(&reference.handshake_hash),
            "{name}: {side} handshake hash"
        );
    }
    // The raw Split() keys, which the data plane uses (docs/protocol.md: the initiator sends
    // with the first).
    assert_eq!(
        init.dangerously_get_raw_split(),
        reference.split,
        "{name}: split"
    );
    assert_eq!(
        resp.dangerously_get_raw_split(),
        reference.split,
        "{name}: split"
    );

    // Transport: the parties keep alternating, initiator first, each with its own nonce.
    let mut init = init.into_transport_mode().unwrap();
    let mut resp = resp.into_transport_mode().unwrap();
    for (i, m) in v.messages.iter().enumerate().skip(2) {
        let (sender, receiver) = if i % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let payload = unhex(&m.payload);
        let n = sender.write_message(&payload, &mut buf).unwrap();
        assert_eq!(
            hex(&buf[..n]),
            m.ciphertext,
            "{name}: transport message {i}"
        );
        let k = receiver.read_message(&buf[..n], &mut out).unwrap();
        assert_eq!(
            &out[..k],
            &payload[..],
            "{name}: transport message {i} payload"
        );
    }
}

fn load() -> File {
    serde_json::from_str(VECTORS).unwrap()
}

#[test]
fn cacophony_ik_aesgcm_sha256_vectors() {
    let file = load();
    let names: Vec<&str> = file
        .vectors
        .iter()
        .map(|v| v.protocol_name.as_str())
        .collect();
    // The protocol we ship must be covered; the plain IK entry is an extra check.
    assert!(names.contains(&concentrator::proto::constants::NOISE_PARAMS));
    assert!(names.contains(&"Noise_IK_25519_AESGCM_SHA256"));
    for v in &file.vectors {
        run(v);
    }
}

/// A wrong byte in any message must be caught: guards against the test passing vacuously.
#[test]
fn tampered_vectors_are_detected() {
    let file = load();
    let v = file
        .vectors
        .iter()
        .find(|v| v.protocol_name == concentrator::proto::constants::NOISE_PARAMS)
        .unwrap();
    for i in 0..v.messages.len() {
        let mut bad = v.clone();
        let ct = &mut bad.messages[i].ciphertext;
        let last = ct.pop().unwrap();
        ct.push(if last == '0' { '1' } else { '0' });
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&bad)));
        assert!(result.is_err(), "tampered message {i} was not detected");
    }
}
