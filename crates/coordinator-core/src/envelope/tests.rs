use super::*;
use proptest::prelude::*;

fn sample() -> Envelope {
    Envelope {
        kind: Kind::Broadcast,
        from: 7,
        from_incarnation: 1_700_000_000_000_000,
        to: 0,
        to_incarnation: 0,
        seq: 42,
        aux: 9,
        topic: Bytes::from_static(b"cache.invalidate"),
        payload: Bytes::from_static(b"mailbox 1234 changed"),
    }
}

#[test]
fn round_trips_plain_sealed_and_encrypted() {
    for codec in [
        Codec::new("c", None, false, 1 << 20),
        Codec::new("c", Some(b"key"), false, 1 << 20),
        Codec::new("c", Some(b"key"), true, 1 << 20),
    ] {
        let frame = codec.encode(&sample()).unwrap();
        assert_eq!(codec.decode(frame).unwrap(), sample(), "{codec:?}");
    }
}

#[test]
fn encryption_hides_the_payload_and_authentication_alone_does_not() {
    let sealed = Codec::new("c", Some(b"key"), false, 1 << 20)
        .encode(&sample())
        .unwrap();
    let encrypted = Codec::new("c", Some(b"key"), true, 1 << 20)
        .encode(&sample())
        .unwrap();
    let contains = |frame: &Bytes| frame.windows(7).any(|w| w == b"mailbox");
    assert!(contains(&sealed));
    assert!(!contains(&encrypted));
}

#[test]
fn wrong_key_missing_key_and_unsealed_frames_are_refused() {
    let ours = Codec::new("c", Some(b"right"), false, 1 << 20);
    let theirs = Codec::new("c", Some(b"wrong"), false, 1 << 20);
    let plain = Codec::new("c", None, false, 1 << 20);
    let other_cluster = Codec::new("other", Some(b"right"), false, 1 << 20);
    assert_eq!(
        ours.decode(theirs.encode(&sample()).unwrap()),
        Err(DecodeError::BadTag)
    );
    assert_eq!(
        ours.decode(other_cluster.encode(&sample()).unwrap()),
        Err(DecodeError::BadTag)
    );
    assert_eq!(
        ours.decode(plain.encode(&sample()).unwrap()),
        Err(DecodeError::NotSealed)
    );
    assert_eq!(
        plain.decode(ours.encode(&sample()).unwrap()),
        Err(DecodeError::NoKey)
    );
}

/// On links that authenticate every byte (Native), envelopes go unsealed,
/// also when `encrypt` is set, and come in unsealed; sealed ones from a node
/// that seals are still checked; elsewhere the same unsealed frame is refused.
#[test]
fn on_authenticated_links_envelopes_go_and_come_unsealed() {
    let sealing = Codec::new("c", Some(b"key"), false, 1 << 20);
    let sealed = sealing.encode(&sample()).unwrap();
    for encrypt in [false, true] {
        let linked = Codec::new("c", Some(b"key"), encrypt, 1 << 20).on_authenticated_links();
        let frame = linked.encode(&sample()).unwrap();
        assert_eq!(frame[4], 0, "flags of an unsealed envelope");
        assert_eq!(frame.len(), sealed.len() - TAG_LEN, "no tag");
        assert!(frame.windows(7).any(|w| w == b"mailbox"), "not encrypted");
        assert_eq!(linked.decode(frame.clone()).unwrap(), sample());
        assert_eq!(sealing.decode(frame), Err(DecodeError::NotSealed));
        assert_eq!(linked.decode(sealed.clone()).unwrap(), sample());
        let mut tampered = sealed.to_vec();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            linked.decode(Bytes::from(tampered)),
            Err(DecodeError::BadTag)
        );
        // The largest payload is the same on every carrier.
        assert_eq!(linked.max_payload(5), sealing.max_payload(5));
    }
}

/// Flips every bit of the frame `make` seals, one at a time, authenticated
/// only (keyed BLAKE3) and encrypted (XChaCha20-Poly1305): none goes unnoticed.
fn every_flipped_bit_is_detected(make: impl Fn(&Codec) -> Bytes) {
    for encrypt in [false, true] {
        let codec = Codec::new("c", Some(b"key"), encrypt, 1 << 20);
        let frame = make(&codec);
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut tampered = frame.to_vec();
                tampered[byte] ^= 1 << bit;
                assert!(
                    codec.decode(Bytes::from(tampered)).is_err(),
                    "encrypt {encrypt}: byte {byte} bit {bit} went unnoticed"
                );
            }
        }
    }
}

#[test]
fn every_flipped_bit_of_a_sealed_frame_is_detected() {
    every_flipped_bit_is_detected(|codec| codec.encode(&sample()).unwrap());
}

#[test]
fn sizes_are_enforced_both_ways() {
    let codec = Codec::new("c", None, false, 200);
    let mut big = sample();
    big.payload = Bytes::from(vec![0u8; 200]);
    assert!(matches!(
        codec.encode(&big),
        Err(EncodeError::TooLarge { .. })
    ));
    let roomy = Codec::new("c", None, false, 1 << 20);
    let frame = roomy.encode(&big).unwrap();
    assert!(matches!(
        codec.decode(frame),
        Err(DecodeError::TooLarge { .. })
    ));
    let mut fits = sample();
    fits.payload = Bytes::from(vec![1u8; codec.max_payload(fits.topic.len())]);
    assert!(codec.encode(&fits).is_ok());
}

#[test]
fn garbage_gets_a_precise_error() {
    let codec = Codec::new("c", None, false, 1 << 20);
    assert_eq!(
        codec.decode(Bytes::from_static(b"hello")),
        Err(DecodeError::Truncated(5))
    );
    assert_eq!(
        codec.decode(Bytes::from(vec![0u8; 100])),
        Err(DecodeError::BadMagic)
    );
    let mut frame = codec.encode(&sample()).unwrap().to_vec();
    frame[2] = 9;
    assert_eq!(
        codec.decode(Bytes::from(frame.clone())),
        Err(DecodeError::UnsupportedVersion(9))
    );
    frame[2] = VERSION;
    frame.push(0);
    assert_eq!(
        codec.decode(Bytes::from(frame)),
        Err(DecodeError::BadLength("payload length"))
    );
}

#[test]
fn peek_sender_reads_the_claimed_sender() {
    let frame = Codec::new("c", None, false, 1 << 20)
        .encode(&sample())
        .unwrap();
    assert_eq!(peek_sender(&frame), Some(7));
    assert_eq!(peek_sender(b"junk"), None);
}

#[test]
fn peek_request_id_reads_aux_of_requests_and_replies_only() {
    let codec = Codec::new("c", Some(b"key"), true, 1 << 20);
    for (kind, expected) in [
        (Kind::Request, Some(9)),
        (Kind::Reply, Some(9)),
        (Kind::ReplyError, Some(9)),
        (Kind::Broadcast, None),
        (Kind::Heartbeat, None),
    ] {
        let frame = codec.encode(&Envelope { kind, ..sample() }).unwrap();
        assert_eq!(peek_request_id(&frame), expected, "{kind:?}");
    }
    assert_eq!(peek_request_id(b"junk"), None);
}

fn numbered(seq: u64, payload: &'static [u8]) -> Envelope {
    Envelope {
        seq,
        aux: 0,
        payload: Bytes::from_static(payload),
        ..sample()
    }
}

fn batch_of(envelopes: &[Envelope]) -> Batch {
    let mut batch = Batch::new(7, sample().from_incarnation, 1024);
    for envelope in envelopes {
        batch.push(envelope.seq, &envelope.topic, &envelope.payload);
    }
    batch
}

#[test]
fn a_batch_round_trips_plain_sealed_and_encrypted() {
    let envelopes = [
        numbered(4, b"one"),
        numbered(5, b""),
        Envelope {
            topic: Bytes::from_static(b"other"),
            ..numbered(6, b"three")
        },
        numbered(7, b"four"),
    ];
    for codec in [
        Codec::new("c", None, false, 1 << 20),
        Codec::new("c", Some(b"key"), false, 1 << 20),
        Codec::new("c", Some(b"key"), true, 1 << 20),
    ] {
        let frame = codec.seal_batch(batch_of(&envelopes));
        assert_eq!(peek_kind(&frame), Some(Kind::Batch));
        let batch = codec.decode(frame).unwrap();
        assert_eq!(
            (batch.kind, batch.seq, batch.aux, batch.from),
            (Kind::Batch, 4, 4, 7)
        );
        assert_eq!(codec.unbatch(&batch).unwrap(), envelopes, "{codec:?}");
    }
}

#[test]
fn a_repeated_topic_is_written_once() {
    let one = batch_of(&[numbered(1, b"x")]).size();
    let two = batch_of(&[numbered(1, b"x"), numbered(2, b"x")]).size();
    assert_eq!(two - one, 1 + 4 + 1, "a record with its topic elided");
}

#[test]
fn a_batch_of_one_is_sent_as_a_plain_broadcast() {
    for codec in [
        Codec::new("c", None, false, 1 << 20),
        Codec::new("c", Some(b"key"), false, 1 << 20),
    ] {
        let one = numbered(5, b"alone");
        assert_eq!(
            codec.seal_batch(batch_of(std::slice::from_ref(&one))),
            codec.encode(&one).unwrap()
        );
    }
    let encrypting = Codec::new("c", Some(b"key"), true, 1 << 20);
    let frame = encrypting.seal_batch(batch_of(&[numbered(5, b"alone")]));
    assert_eq!(encrypting.decode(frame).unwrap(), numbered(5, b"alone"));
}

#[test]
fn every_flipped_bit_of_a_sealed_batch_is_detected() {
    every_flipped_bit_is_detected(|codec| {
        codec.seal_batch(batch_of(&[numbered(1, b"a"), numbered(2, b"b")]))
    });
}

#[test]
fn a_batch_with_a_bad_record_is_refused_whole() {
    let codec = Codec::new("c", None, false, 1 << 20);
    let frame = codec.seal_batch(batch_of(&[
        numbered(1, b"a"),
        Envelope {
            topic: Bytes::from_static(b"t2"),
            ..numbered(2, b"b")
        },
    ]));
    let first = BATCH_HEAD;
    let second = first + 1 + sample().topic.len() + 4 + 1;
    let refused = |at: usize, value: u8| {
        let mut bytes = frame.to_vec();
        bytes[at] = value;
        let batch = codec.decode(Bytes::from(bytes)).unwrap();
        match codec.unbatch(&batch) {
            Err(DecodeError::BadBatch { index, reason }) => (index, reason),
            other => panic!("byte {at} = {value}: {other:?}"),
        }
    };
    let (index, reason) = refused(first, 0);
    assert_eq!(index, 0);
    assert!(reason.contains("repeats no topic"), "{reason}");
    let (index, reason) = refused(second + 1, 0xff);
    assert_eq!(index, 1);
    assert!(reason.contains("not UTF-8"), "{reason}");
    let (index, reason) = refused(second + 3, 200);
    assert_eq!(index, 1);
    assert!(reason.contains("runs past the batch"), "{reason}");
    let (index, reason) = refused(52, 3);
    assert_eq!(index, 2);
    assert!(
        reason.contains("2 broadcasts where the batch says 3"),
        "{reason}"
    );
    assert_eq!(refused(44, 0).1, "header fields of a batch out of range");
}

#[test]
fn a_batch_never_outgrows_the_frame_limit() {
    let codec = Codec::new("c", Some(b"key"), true, 4096);
    let topic = &sample().topic;
    let payload = [0u8; 100];
    let mut batch = Batch::new(7, sample().from_incarnation, 0);
    while batch.size() + batch.record_size(topic, payload.len()) <= codec.batch_limit() {
        batch.push(batch.len() as u64 + 1, topic, &payload);
    }
    assert!(batch.len() > 10);
    let frame = codec.seal_batch(batch);
    assert!(frame.len() <= 4096, "{} bytes", frame.len());
    assert!(codec.decode(frame).is_ok());
}

fn direct(seq: u64, kind: Kind, aux: u64, payload: &'static [u8]) -> Envelope {
    Envelope {
        kind,
        to: 3,
        to_incarnation: 99,
        seq,
        aux,
        topic: Bytes::new(),
        payload: Bytes::from_static(payload),
        ..sample()
    }
}

fn seal_directs(codec: &Codec, envelopes: &[Envelope]) -> Bytes {
    let records: Vec<DirectRecord<'_>> = envelopes
        .iter()
        .map(|e| DirectRecord {
            kind: e.kind,
            aux: e.aux,
            payload: &e.payload,
        })
        .collect();
    let header = Header {
        kind: Kind::DirectBatch,
        aux: 0,
        ..envelopes[0].header()
    };
    codec.seal_direct(&header, &records)
}

#[test]
fn a_direct_batch_round_trips_plain_sealed_and_encrypted() {
    let envelopes = [
        direct(10, Kind::Direct, 0, b"one-way"),
        direct(11, Kind::Request, 17, b"append entries"),
        direct(12, Kind::Reply, 5, b""),
        direct(13, Kind::ReplyError, 6, b"no such key"),
    ];
    for codec in [
        Codec::new("c", None, false, 1 << 20),
        Codec::new("c", Some(b"key"), false, 1 << 20),
        Codec::new("c", Some(b"key"), true, 1 << 20),
    ] {
        let frame = seal_directs(&codec, &envelopes);
        assert_eq!(peek_kind(&frame), Some(Kind::DirectBatch));
        let batch = codec.decode(frame).unwrap();
        assert_eq!(
            (
                batch.kind,
                batch.seq,
                batch.aux,
                batch.to,
                batch.to_incarnation
            ),
            (Kind::DirectBatch, 10, 4, 3, 99)
        );
        assert_eq!(codec.unbatch(&batch).unwrap(), envelopes, "{codec:?}");
        // Each record costs its payload and 13 bytes, not a header of 58.
        let payloads: usize = envelopes.iter().map(|e| e.payload.len()).sum();
        assert_eq!(
            batch.payload.len(),
            payloads + envelopes.len() * DirectRecord::HEAD
        );
    }
}

#[test]
fn a_direct_batch_of_one_is_a_plain_envelope_of_its_kind() {
    let codec = Codec::new("c", Some(b"key"), false, 1 << 20);
    let one = direct(4, Kind::Request, 8, b"vote");
    assert_eq!(
        seal_directs(&codec, std::slice::from_ref(&one)),
        codec.encode(&one).unwrap()
    );
}

#[test]
fn every_flipped_bit_of_a_sealed_direct_batch_is_detected() {
    every_flipped_bit_is_detected(|codec| {
        seal_directs(
            codec,
            &[
                direct(1, Kind::Direct, 0, b"a"),
                direct(2, Kind::Reply, 1, b"b"),
            ],
        )
    });
}

#[test]
fn a_direct_batch_that_lies_is_refused_whole_naming_the_record() {
    let codec = Codec::new("c", None, false, 1 << 20);
    let good = codec
        .decode(seal_directs(
            &codec,
            &[
                direct(1, Kind::Direct, 0, b"a"),
                direct(2, Kind::Direct, 0, b"b"),
            ],
        ))
        .unwrap();
    let refused = |batch: Envelope| match codec.unbatch(&batch) {
        Err(DecodeError::BadBatch { index, reason }) => (index, reason),
        other => panic!("not refused: {other:?}"),
    };
    // A broadcast's kind inside.
    let mut payload = good.payload.to_vec();
    payload[DirectRecord::HEAD + 1] = Kind::Broadcast as u8;
    let (index, reason) = refused(Envelope {
        payload: Bytes::from(payload),
        ..good.clone()
    });
    assert_eq!(index, 1);
    assert!(reason.contains("kind 1"), "{reason}");
    // A count that disagrees with the records.
    let (index, _) = refused(Envelope {
        aux: 3,
        ..good.clone()
    });
    assert_eq!(index, 2);
    // A record cut short.
    let (index, reason) = refused(Envelope {
        payload: good.payload.slice(..good.payload.len() - 1),
        ..good.clone()
    });
    assert_eq!(index, 1);
    assert!(reason.contains("past the batch"), "{reason}");
    // No recipient.
    refused(Envelope { to: 0, ..good });
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for codec in [Codec::new("c", None, false, 1 << 20), Codec::new("c", Some(b"k"), true, 1 << 20)] {
            let _ = codec.decode(Bytes::from(bytes.clone()));
        }
    }

    #[test]
    fn decoding_a_mutated_valid_frame_never_panics(at in 0usize..200, value in any::<u8>(), cut in 0usize..200) {
        let codec = Codec::new("c", None, false, 1 << 20);
        let mut frame = codec.encode(&sample()).unwrap().to_vec();
        let at = at % frame.len();
        frame[at] = value;
        frame.truncate(frame.len() - cut % frame.len());
        let _ = codec.decode(Bytes::from(frame));
    }

    #[test]
    fn any_envelope_round_trips(kind in 1u8..=9, from in any::<u64>(), seq in any::<u64>(), aux in any::<u64>(),
                                topic in "[a-z.]{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let codec = Codec::new("c", Some(b"k"), false, 1 << 20);
        let envelope = Envelope {
            kind: Kind::from_byte(kind).unwrap(), from, from_incarnation: 3, to: 4, to_incarnation: 5, seq, aux,
            topic: Bytes::from(topic), payload: Bytes::from(payload),
        };
        prop_assert_eq!(codec.decode(codec.encode(&envelope).unwrap()).unwrap(), envelope);
    }

    #[test]
    fn opening_an_arbitrary_batch_never_panics(count in 0u64..5, bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let codec = Codec::new("c", None, false, 1 << 20);
        let batch = Envelope { kind: Kind::Batch, aux: count, topic: Bytes::new(), to: 0, payload: Bytes::from(bytes.clone()), ..sample() };
        let _ = codec.unbatch(&batch);
        let direct = Envelope { kind: Kind::DirectBatch, to: 3, ..batch };
        let _ = codec.unbatch(&direct);
    }
}

#[test]
fn peek_broadcast_high_reads_the_last_number_of_broadcasts_and_batches() {
    let codec = Codec::new("c", Some(b"key"), false, 1 << 20).on_authenticated_links();
    let one = codec.encode(&numbered(12, b"x")).unwrap();
    assert_eq!(peek_broadcast_high(&one), Some(12));
    let batch = codec.seal_batch(batch_of(&[
        numbered(4, b"a"),
        numbered(5, b"b"),
        numbered(6, b"c"),
    ]));
    assert_eq!(peek_kind(&batch), Some(Kind::Batch));
    assert_eq!(peek_broadcast_high(&batch), Some(6));
    let heartbeat = codec
        .encode(&Envelope {
            kind: Kind::Heartbeat,
            ..sample()
        })
        .unwrap();
    assert_eq!(peek_broadcast_high(&heartbeat), None);
    assert_eq!(peek_broadcast_high(b"junk"), None);
}

/// A heartbeat capped for a link announces no more than what went before
/// it, and is otherwise the same frame; sealed frames and other kinds are
/// left alone.
#[test]
fn cap_announced_lowers_only_the_number_of_unsealed_heartbeats() {
    let linked = Codec::new("c", Some(b"key"), false, 1 << 20).on_authenticated_links();
    for kind in [Kind::Heartbeat, Kind::Join, Kind::Announce] {
        let envelope = Envelope {
            kind,
            seq: 42,
            topic: Bytes::new(),
            payload: Bytes::new(),
            ..sample()
        };
        let frame = linked.encode(&envelope).unwrap();
        let capped = cap_announced(&frame, 30).expect("announces past 30");
        assert_eq!(
            linked.decode(capped).unwrap(),
            Envelope {
                seq: 30,
                ..envelope.clone()
            },
            "{kind:?}"
        );
        assert_eq!(cap_announced(&frame, 42), None, "{kind:?}: not past 42");
        assert_eq!(cap_announced(&frame, 50), None, "{kind:?}");
        let sealed = Codec::new("c", Some(b"key"), false, 1 << 20)
            .encode(&envelope)
            .unwrap();
        assert_eq!(cap_announced(&sealed, 30), None, "{kind:?}: sealed");
    }
    let broadcast = linked.encode(&numbered(42, b"x")).unwrap();
    assert_eq!(cap_announced(&broadcast, 30), None);
    assert_eq!(cap_announced(b"junk", 30), None);
}
