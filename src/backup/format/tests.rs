use super::object::decompress;
use super::*;
use crate::backup::crypto::KeyId;
use proptest::prelude::*;

fn enc() -> Codec {
    Codec::Encrypted(DataKey::generate().expect("rng"))
}

#[test]
fn plain_and_encrypted_round_trip() {
    for codec in [Codec::Plain, enc()] {
        let e = encode(ObjectKind::Chunk, b"hello hello hello", &codec).expect("encode");
        assert_eq!(&e.bytes[..4], b"CPBK");
        assert_eq!(e.bytes[4], 1);
        assert_eq!(e.bytes[5], ObjectKind::Chunk as u8);
        let back = decode(&e.bytes, ObjectKind::Chunk, &codec, Some(&e.id)).expect("decode");
        assert_eq!(back, b"hello hello hello");
        let h = verify_stored(&e.bytes, &e.checksum).expect("verify");
        assert_eq!(h.encrypted, codec.is_encrypted());
        assert!(h.compressed);
    }
}

#[test]
fn ids_are_content_addresses() {
    let plain = encode(ObjectKind::Index, b"abc", &Codec::Plain).expect("encode");
    assert_eq!(
        plain.id,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let codec = enc();
    let a = encode(ObjectKind::Index, b"abc", &codec).expect("encode");
    let b = encode(ObjectKind::Index, b"abc", &codec).expect("encode");
    assert_eq!(a.id, b.id, "same plaintext, same address");
    assert_ne!(a.id, plain.id, "keyed address reveals no plain hash");
    assert_ne!(a.checksum, b.checksum, "random nonces");
    assert_ne!(a.id, enc().content_id(b"abc"), "address depends on the key");
}

#[test]
fn encrypted_object_with_plain_codec_asks_for_the_key() {
    let e = encode(ObjectKind::Manifest, b"{}", &enc()).expect("encode");
    let err = decode(&e.bytes, ObjectKind::Manifest, &Codec::Plain, None).expect_err("no key");
    assert!(matches!(err, FormatError::EncryptedNeedsKey));
    assert!(err.to_string().contains("configure the key"));
}

#[test]
fn plain_object_in_encrypted_repository_is_refused() {
    let e = encode(ObjectKind::Manifest, b"{}", &Codec::Plain).expect("encode");
    let err = decode(&e.bytes, ObjectKind::Manifest, &enc(), None).expect_err("plain");
    assert!(matches!(err, FormatError::NotEncrypted { .. }));
}

#[test]
fn wrong_key_fails_authentication() {
    let e = encode(ObjectKind::Chunk, b"data", &enc()).expect("encode");
    let err = decode(&e.bytes, ObjectKind::Chunk, &enc(), None).expect_err("wrong key");
    assert!(matches!(
        err,
        FormatError::Crypto(CryptoError::Corrupt { .. })
    ));
}

#[test]
fn unknown_version_is_named() {
    let mut e = encode(ObjectKind::Chunk, b"data", &Codec::Plain).expect("encode");
    e.bytes[4] = 7;
    let err = decode(&e.bytes, ObjectKind::Chunk, &Codec::Plain, None).expect_err("v7");
    assert!(matches!(
        err,
        FormatError::UnsupportedVersion { found: 7, .. }
    ));
    assert!(err.to_string().contains("version 7"));
}

#[test]
fn wrong_kind_and_address_are_detected() {
    let e = encode(ObjectKind::Chunk, b"data", &Codec::Plain).expect("encode");
    assert!(matches!(
        decode(&e.bytes, ObjectKind::Index, &Codec::Plain, None),
        Err(FormatError::WrongKind { .. })
    ));
    assert!(matches!(
        decode(
            &e.bytes,
            ObjectKind::Chunk,
            &Codec::Plain,
            Some(&"0".repeat(64))
        ),
        Err(FormatError::AddressMismatch { .. })
    ));
}

#[test]
fn decompression_bomb_is_refused() {
    let big = vec![0u8; 4 * 1024 * 1024];
    let e = encode(ObjectKind::Chunk, &big, &Codec::Plain).expect("encode");
    assert!(e.bytes.len() < 4096, "zeros compress well");
    let err = decode_with_limit(
        &e.bytes,
        ObjectKind::Chunk,
        &Codec::Plain,
        None,
        1024 * 1024,
    )
    .expect_err("too large");
    assert!(matches!(err, FormatError::TooLarge { .. }));
}

#[test]
fn frames_without_a_stated_size_decompress_within_the_limit() {
    let data = b"chunk ".repeat(50_000);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.include_contentsize(false).expect("no size");
    std::io::Write::write_all(&mut enc, &data).expect("write");
    let frame = enc.finish().expect("finish");
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&frame).expect("frame"),
        None,
        "the frame states no size"
    );
    let out = decompress(&frame, ObjectKind::Chunk, data.len()).expect("within the limit");
    assert_eq!(out, data);
    let err = decompress(&frame, ObjectKind::Chunk, data.len() - 1).expect_err("over");
    assert!(matches!(err, FormatError::TooLarge { .. }), "{err}");
}

#[test]
fn a_frame_that_states_its_size_decompresses_into_a_large_buffer() {
    let data = b"record ".repeat(300_000);
    let frame = zstd::bulk::compress(&data, 3).expect("compress");
    let out = decompress(&frame, ObjectKind::Chunk, data.len()).expect("decompress");
    assert_eq!(out, data);
    assert!(
        out.capacity() > 32 << 20,
        "a large buffer: {}",
        out.capacity()
    );
}

#[test]
fn config_and_key_objects_round_trip() {
    let c = RepoConfig::new(true).expect("rng");
    assert_eq!(c.repository_id.len(), 32);
    let e = c.encode().expect("enc");
    assert_eq!(RepoConfig::decode(&e.bytes).expect("dec"), c);
    let master = crate::backup::crypto::MasterKey::generate().expect("rng");
    let (ring, data) = crate::backup::crypto::KeyRing::create(&master).expect("ring");
    let e = encode_key_slot(&ring.slots[0]).expect("enc");
    let slot = decode_key_slot(&e.bytes, master.key_id()).expect("dec");
    assert_eq!(
        crate::backup::crypto::unwrap(&slot, &master).expect("unwrap"),
        data
    );
    let other = KeyId::parse("0123456789abcdef").expect("id");
    assert!(decode_key_slot(&e.bytes, &other).is_err());
}

#[test]
fn repo_config_refuses_silent_downgrade() {
    let mut c = RepoConfig {
        format_version: 1,
        repository_id: "0".repeat(32),
        encrypted: true,
        created: "2026-01-01T00:00:00Z".into(),
    };
    assert!(matches!(
        c.check(false),
        Err(FormatError::EncryptedNeedsKey)
    ));
    c.check(true).expect("key configured");
    c.encrypted = false;
    assert!(c.check(true).is_err());
    c.check(false).expect("plain repo, no key");
    c.format_version = 2;
    assert!(c.check(false).is_err());
}

/// Objects written by format version 1, kept as fixtures: every later
/// chromaprod must read them (zstd output may change between releases,
/// so encoding is not pinned, decoding is).
const FIXTURE_PLAIN: &str = "4350424b0103010028b52ffd2415a900006368726f6d6170726f64206669787475726520763138cb92dcd436dc3758d7d12b6e343f84b868c62a";
const FIXTURE_ENCRYPTED: &str = "4350424b010303009fa00b883e3268f17f3d6af7c5cd2f3f10e4a68ee96f3f928dc2f5c47a3b4867c152bdf435d8c2fb33048e7b855104ede974eb37635869ec67b51255d72ac81359b38f1f7577b5779c2cdcede263";

#[test]
fn version_1_fixtures_still_decode() {
    let plain = crate::backup::crypto::from_hex(FIXTURE_PLAIN).expect("hex");
    let id = "f32cd0da2867836b4805e11ccc13bc9d85eb12f0551185115498c365a925272d";
    verify_self(&plain).expect("self-check");
    let out = decode(&plain, ObjectKind::Chunk, &Codec::Plain, Some(id)).expect("plain");
    assert_eq!(out, b"chromaprod fixture v1");
    let enc = crate::backup::crypto::from_hex(FIXTURE_ENCRYPTED).expect("hex");
    let codec = Codec::Encrypted(DataKey::from_raw(&mut [0x42; 32]).expect("dk"));
    let id = "48d7e5c123424ca7ebcb52f8992cdaf4ea7ffaac71b9d5fb54ed532907cc8b6e";
    let h = verify_self(&enc).expect("self-check without the key");
    assert!(h.encrypted && h.compressed && h.kind == ObjectKind::Chunk);
    let out = decode(&enc, ObjectKind::Chunk, &codec, Some(id)).expect("encrypted");
    assert_eq!(out, b"chromaprod fixture v1");
    assert!(matches!(
        decode(&enc, ObjectKind::Chunk, &Codec::Plain, None),
        Err(FormatError::EncryptedNeedsKey)
    ));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn chunk_with_document(doc: &str) -> Vec<u8> {
    use crate::backup::records::{encode_chunk, Record};
    let r = Record {
        id: "r1".into(),
        embedding: Some(vec![0.25; 8]),
        document: Some(doc.to_string()),
        metadata: None,
        uri: None,
    };
    encode_chunk(&[r]).expect("chunk")
}

#[test]
fn encrypted_objects_never_show_the_document() {
    let doc = "the launch code is swordfish-7731, tell nobody";
    let plaintext = chunk_with_document(doc);
    assert!(contains(&plaintext, doc.as_bytes()));
    // Plain repositories offer no confidentiality (compression may or
    // may not leave the text readable); encrypted ones must.
    let plain = encode(ObjectKind::Chunk, &plaintext, &Codec::Plain).expect("enc");
    // Encrypted: neither the text nor any piece of its compressed form.
    let enc = encode(ObjectKind::Chunk, &plaintext, &enc()).expect("enc");
    assert!(!contains(&enc.bytes, b"swordfish"));
    let zstd_body = &plain.bytes[HEADER_LEN..plain.bytes.len() - CHECK_LEN];
    for w in zstd_body.windows(12) {
        assert!(!contains(&enc.bytes, w));
    }
}

fn kinds() -> impl Strategy<Value = ObjectKind> {
    prop_oneof![
        Just(ObjectKind::Config),
        Just(ObjectKind::Key),
        Just(ObjectKind::Chunk),
        Just(ObjectKind::Index),
        Just(ObjectKind::Manifest),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), kind in kinds()) {
        let _ = read_header(&bytes);
        let _ = decode(&bytes, kind, &Codec::Plain, None);
        let _ = decode(&bytes, kind, &enc(), None);
        // Same with a valid header in front.
        let mut framed = b"CPBK\x01".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode(&framed, kind, &Codec::Plain, None);
        let _ = decode(&framed, kind, &enc(), None);
    }

    #[test]
    fn truncation_is_an_error(plain in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>(), encrypted in any::<bool>()) {
        let codec = if encrypted { enc() } else { Codec::Plain };
        let e = encode(ObjectKind::Chunk, &plain, &codec).expect("encode");
        let n = cut.index(e.bytes.len());
        let truncated = &e.bytes[..n];
        prop_assert!(decode(truncated, ObjectKind::Chunk, &codec, Some(&e.id)).is_err());
        prop_assert!(verify_stored(truncated, &e.checksum).is_err());
        prop_assert!(verify_self(truncated).is_err());
    }

    #[test]
    fn any_flipped_bit_is_detected(plain in proptest::collection::vec(any::<u8>(), 0..512), bit in any::<prop::sample::Index>(), encrypted in any::<bool>()) {
        let codec = if encrypted { enc() } else { Codec::Plain };
        let e = encode(ObjectKind::Chunk, &plain, &codec).expect("encode");
        let mut bytes = e.bytes.clone();
        let b = bit.index(bytes.len() * 8);
        bytes[b / 8] ^= 1 << (b % 8);
        prop_assert!(verify_stored(&bytes, &e.checksum).is_err());
        prop_assert!(decode(&bytes, ObjectKind::Chunk, &codec, Some(&e.id)).is_err());
        // Objects check themselves: no id or checksum needed.
        prop_assert!(decode(&bytes, ObjectKind::Chunk, &codec, None).is_err());
        prop_assert!(verify_self(&bytes).is_err());
    }

    #[test]
    fn encrypted_chunks_never_contain_their_documents(doc in "[a-zA-Z0-9 éß漢]{16,64}") {
        let plaintext = chunk_with_document(&doc);
        let e = encode(ObjectKind::Chunk, &plaintext, &enc()).expect("enc");
        prop_assert!(!contains(&e.bytes, doc.as_bytes()));
        let back = decode(&e.bytes, ObjectKind::Chunk, &Codec::Plain, None);
        prop_assert!(matches!(back, Err(FormatError::EncryptedNeedsKey)));
    }

    #[test]
    fn round_trip_any_plaintext(plain in proptest::collection::vec(any::<u8>(), 0..2048), kind in kinds(), encrypted in any::<bool>()) {
        let codec = if encrypted { enc() } else { Codec::Plain };
        let e = encode(kind, &plain, &codec).expect("encode");
        prop_assert_eq!(decode(&e.bytes, kind, &codec, Some(&e.id)).expect("decode"), plain);
    }
}
