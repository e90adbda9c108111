use std::path::Path;

use base64::Engine as _;
use zeroize::ZeroizeOnDrop;

use super::data_key::DataKeyInner;
use super::*;
use proptest::prelude::*;

fn key_text(k: &MasterKey) -> String {
    to_hex(k.key.expose())
}

#[test]
fn key_file_formats_all_load_the_same_key() {
    let k = MasterKey::generate().expect("rng");
    let raw = *k.key.expose();
    let p = Path::new("/k");
    let hex =
        MasterKey::from_key_file_bytes(format!("  {}\n", to_hex(&raw)).as_bytes(), p).expect("hex");
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let b64 = MasterKey::from_key_file_bytes(format!("{b64}\n").as_bytes(), p).expect("b64");
    let bin = MasterKey::from_key_file_bytes(&raw, p).expect("raw");
    for other in [&hex, &b64, &bin] {
        assert_eq!(other.key_id(), k.key_id());
        assert_eq!(key_text(other), key_text(&k));
    }
}

#[test]
fn bad_key_files_are_rejected_with_the_path_and_without_the_contents() {
    let p = Path::new("/etc/chromaprod/backup.key");
    for bad in [
        &b""[..],
        b"\n\n",
        b"not a key at all",
        b"00112233",
        b"correct horse battery staple 123",
        &[0xffu8; 31],
        "zz".repeat(32).as_bytes(),
    ] {
        let err = MasterKey::from_key_file_bytes(bad, p).expect_err("must fail");
        let msg = err.to_string();
        assert!(matches!(err, CryptoError::BadKeyFile { .. }), "{msg}");
        assert!(msg.contains("/etc/chromaprod/backup.key"), "{msg}");
        assert!(!msg.contains("not a key at all"), "{msg}");
    }
}

#[test]
fn debug_never_shows_key_material() {
    let k = MasterKey::generate().expect("rng");
    let dbg = format!("{k:?}");
    assert!(!dbg.contains(&key_text(&k)));
    assert!(dbg.contains(k.key_id().as_str()));
    let d = DataKey::generate().expect("rng");
    let dbg = format!(
        "{d:?} {:?}",
        crate::backup::format::Codec::Encrypted(d.clone())
    );
    assert!(!dbg.contains(&to_hex(d.0.raw.expose())));
    assert!(!dbg.contains(&to_hex(d.0.enc.expose())));
}

/// Compile-time: key types wipe their key material when dropped. This
/// shows the wiring (the trait, backed by `Secret`'s wipe), not the
/// absence of every copy: ring's key schedules are not wiped.
#[test]
fn key_types_are_zeroized_on_drop() {
    fn wipes_on_drop<T: ZeroizeOnDrop>() {}
    wipes_on_drop::<MasterKey>();
    wipes_on_drop::<DataKeyInner>();
    wipes_on_drop::<Zeroizing<[u8; KEY_LEN]>>();
    // `from_raw` leaves zeros where the key was handed in.
    let mut raw = [7u8; KEY_LEN];
    let k = MasterKey::from_raw(&mut raw);
    assert_eq!(raw, [0u8; KEY_LEN]);
    assert_eq!(k.key.expose(), &[7u8; KEY_LEN]);
    let mut raw = [9u8; KEY_LEN];
    let d = DataKey::from_raw(&mut raw).expect("dk");
    assert_eq!(raw, [0u8; KEY_LEN]);
    assert_eq!(d.0.raw.expose(), &[9u8; KEY_LEN]);
}

#[test]
fn key_id_is_stable_and_not_the_key() {
    let k = MasterKey::from_key_file_bytes(&[7u8; 32], Path::new("k")).expect("key");
    let again = MasterKey::from_key_file_bytes(&[7u8; 32], Path::new("k")).expect("key");
    assert_eq!(k.key_id(), again.key_id());
    assert_eq!(k.key_id().as_str().len(), 16);
    assert!(!key_text(&k).contains(k.key_id().as_str()));
    KeyId::parse(k.key_id().as_str()).expect("own ids parse");
    assert!(KeyId::parse("../../etc/passwd").is_err());
    assert!(KeyId::parse("ABCDEF0123456789").is_err());
}

#[test]
fn key_file_is_written_0600_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backup.key");
    let k = MasterKey::generate().expect("rng");
    k.write_new_key_file(&path).expect("write");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let loaded = MasterKey::from_file(&path).expect("load");
    assert_eq!(loaded.key_id(), k.key_id());
    let other = MasterKey::generate().expect("rng");
    let err = other.write_new_key_file(&path).expect_err("exists");
    assert!(matches!(err, CryptoError::KeyFileExists { .. }));
    assert_eq!(
        MasterKey::from_file(&path).expect("load").key_id(),
        k.key_id()
    );
}

#[test]
fn a_key_file_group_or_other_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backup.key");
    let k = MasterKey::generate().expect("rng");
    k.write_new_key_file(&path).expect("write");
    for mode in [0o640, 0o604, 0o644, 0o660, 0o606] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = MasterKey::from_file(&path).expect_err("refused");
        let msg = err.to_string();
        assert!(matches!(err, CryptoError::Exposed { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
        assert!(!msg.contains(&key_text(&k)), "{msg}");
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        assert_eq!(
            MasterKey::from_file(&path).expect("private").key_id(),
            k.key_id()
        );
    }
    // A credentials directory that is not systemd's (an operator shell's
    // $CREDENTIALS_DIRECTORY) holds files that are judged the same way.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = MasterKey::from_credential_in(Some(dir.path()), "backup.key").expect_err("exposed");
    assert!(matches!(err, CryptoError::Exposed(_)), "{err}");
    assert!(crate::secret::is_systemd_credential(Path::new(
        "/run/credentials/chromaprod.service/backup-key"
    )));
    assert!(!crate::secret::is_systemd_credential(Path::new(
        "/run/credentials/../../tmp/backup-key"
    )));
}

#[test]
fn missing_key_file_and_credential_say_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = MasterKey::from_file(&dir.path().join("nope")).expect_err("missing");
    assert!(matches!(err, CryptoError::NoKey { .. }));
    let err = MasterKey::from_credential_in(None, "backup-key").expect_err("no dir");
    assert!(err.to_string().contains("LoadCredential=backup-key"));
    let err = MasterKey::from_credential_in(Some(dir.path()), "../x").expect_err("name");
    assert!(matches!(err, CryptoError::BadCredentialName { .. }));
    let k = MasterKey::generate().expect("rng");
    k.write_new_key_file(&dir.path().join("backup-key"))
        .expect("write");
    let loaded = MasterKey::from_credential_in(Some(dir.path()), "backup-key").expect("load");
    assert_eq!(loaded.key_id(), k.key_id());
}

#[test]
fn wrap_unwrap_and_wrong_key() {
    let master = MasterKey::generate().expect("rng");
    let other = MasterKey::generate().expect("rng");
    let (ring, data) = KeyRing::create(&master).expect("create");
    assert_eq!(ring.unlock(&master).expect("unlock"), data);
    assert!(matches!(
        ring.unlock(&other),
        Err(CryptoError::WrongKey { tried: 1 })
    ));
    assert!(matches!(
        unwrap(&ring.slots[0], &other),
        Err(CryptoError::WrongKey { .. })
    ));
    // The slot holds no plaintext key.
    let json = serde_json::to_string(&ring).expect("json");
    assert!(!json.contains(&to_hex(data.0.raw.expose())));
}

#[test]
fn tampered_slot_is_corrupt_not_wrong_key() {
    let master = MasterKey::generate().expect("rng");
    let (mut ring, _) = KeyRing::create(&master).expect("create");
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(&ring.slots[0].wrapped)
        .expect("b64");
    raw[20] ^= 1;
    ring.slots[0].wrapped = base64::engine::general_purpose::STANDARD.encode(raw);
    assert!(matches!(
        ring.unlock(&master),
        Err(CryptoError::Corrupt { .. })
    ));
}

#[test]
fn two_keys_remove_one_other_still_unlocks_and_last_is_kept() {
    let a = MasterKey::generate().expect("rng");
    let b = MasterKey::generate().expect("rng");
    let (mut ring, data) = KeyRing::create(&a).expect("create");
    ring.add(&data, &b).expect("add b");
    assert!(matches!(
        ring.add(&data, &b),
        Err(CryptoError::KeyExists { .. })
    ));
    assert_eq!(ring.unlock(&b).expect("b unlocks"), data);
    ring.remove(a.key_id()).expect("remove a");
    assert!(matches!(ring.unlock(&a), Err(CryptoError::WrongKey { .. })));
    assert_eq!(ring.unlock(&b).expect("b still unlocks"), data);
    let err = ring.remove(b.key_id()).expect_err("last key");
    assert!(matches!(err, CryptoError::LastKey { .. }));
    assert_eq!(ring.slots.len(), 1);
    assert!(matches!(
        ring.remove(a.key_id()),
        Err(CryptoError::UnknownKeyId { .. })
    ));
}

#[test]
fn unlock_tries_all_slots_when_ids_do_not_match() {
    let a = MasterKey::generate().expect("rng");
    let (mut ring, data) = KeyRing::create(&a).expect("create");
    // The id is bound to the slot (it is in the AAD): a relabelled slot
    // opens for nobody. Other slots are still tried.
    ring.slots[0].key_id = KeyId::parse("0000000000000000").expect("id");
    assert!(ring.unlock(&a).is_err());
    let b = MasterKey::generate().expect("rng");
    ring.add(&data, &b).expect("add");
    assert_eq!(ring.unlock(&b).expect("unlock"), data);
}

#[test]
fn data_key_encrypt_round_trip_and_aad_binding() {
    let d = DataKey::generate().expect("rng");
    let sealed = d.encrypt(b"header", b"hello").expect("seal");
    assert_eq!(d.decrypt(b"header", &sealed, "x").expect("open"), b"hello");
    assert!(matches!(
        d.decrypt(b"other", &sealed, "x"),
        Err(CryptoError::Corrupt { .. })
    ));
    let other = DataKey::generate().expect("rng");
    assert!(other.decrypt(b"header", &sealed, "x").is_err());
    assert_ne!(d.content_id(b"a"), other.content_id(b"a"));
    assert_eq!(d.content_id(b"a"), d.content_id(b"a"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn key_file_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = MasterKey::from_key_file_bytes(&bytes, Path::new("k"));
    }

    #[test]
    fn hex_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
    }

    #[test]
    fn any_flipped_bit_in_a_slot_fails(bit in 0usize..(8 * (NONCE_LEN + KEY_LEN + TAG_LEN))) {
        let master = MasterKey::from_key_file_bytes(&[3u8; 32], Path::new("k")).expect("key");
        let data = DataKey::from_raw(&mut [9u8; 32]).expect("dk");
        let slot = wrap(&data, &master).expect("wrap");
        let mut raw = base64::engine::general_purpose::STANDARD.decode(&slot.wrapped).expect("b64");
        raw[bit / 8] ^= 1 << (bit % 8);
        let bad = KeySlot { wrapped: base64::engine::general_purpose::STANDARD.encode(raw), ..slot };
        prop_assert!(unwrap(&bad, &master).is_err());
    }
}
