use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use crate::testkit::{Cluster, qemu_io};

/// A replica SIGKILLed after a flush is reopened from its directory and gives back every
/// flushed write, snapshot layers included, to an engine with a newer epoch.
#[test]
fn replica_reopened_after_sigkill_keeps_flushed_writes() {
    let c = Cluster::new(16 << 20);
    let mut r0 = c.replica(0);
    let mut e1 = c.engine(1, &[0]);
    let uri = c.nbd_uri(1);
    qemu_io(
        &uri,
        &[
            "write -P 0x31 0 1048576",
            "write -P 0x32 4097 9999",
            "flush",
        ],
    );
    r0.kill();
    e1.kill();
    let _r0 = c.replica(0);
    let _e2 = c.engine(2, &[0]);
    qemu_io(
        &c.nbd_uri(2),
        &[
            "read -P 0x31 0 4097",
            "read -P 0x32 4097 9999",
            "read -P 0x31 14096 1034480",
            "read -P 0 1048576 1048576",
        ],
    );
}

/// Garbage on a replica connection (before and after the handshake) closes only that
/// connection; the replica keeps serving its engine.
#[test]
fn replica_closes_connections_with_malformed_frames() {
    let c = Cluster::new(8 << 20);
    let r0 = c.replica(0);
    let _e = c.engine(1, &[0]);
    qemu_io(&c.nbd_uri(1), &["write -P 0x41 0 4096"]);
    // Not a hello at all.
    let mut s = UnixStream::connect(c.replica_socket(0)).expect("connect");
    s.write_all(&[0x55; 64]).expect("garbage");
    let mut b = [0u8; 1];
    assert_eq!(
        s.read(&mut b).unwrap_or(0),
        0,
        "a bad hello must close the connection"
    );
    // A valid hello at the current epoch, then a request with an unknown op.
    let mut s = UnixStream::connect(c.replica_socket(0)).expect("connect");
    let mut hello = b"SHRNHELO".to_vec();
    hello.extend_from_slice(&1u16.to_be_bytes());
    hello.extend_from_slice(&3u16.to_be_bytes());
    hello.extend_from_slice(&0u16.to_be_bytes());
    hello.extend_from_slice(&0u16.to_be_bytes());
    hello.extend_from_slice(&1u64.to_be_bytes());
    hello.extend_from_slice(b"vol");
    s.write_all(&hello).expect("hello");
    let mut welcome = [0u8; 32];
    s.read_exact(&mut welcome).expect("welcome");
    assert_eq!(&welcome[0..8], b"SHRNWELC");
    assert_eq!(&welcome[8..12], &0u32.to_be_bytes(), "hello accepted");
    let mut req = 0x5348_5251u32.to_be_bytes().to_vec();
    req.push(200);
    req.extend_from_slice(&[0u8; 27]);
    s.write_all(&req).expect("bad op");
    assert_eq!(
        s.read(&mut b).unwrap_or(0),
        0,
        "an unknown op must close the connection"
    );
    qemu_io(
        &c.nbd_uri(1),
        &[
            "read -P 0x41 0 4096",
            "write -P 0x42 0 4096",
            "read -P 0x42 0 4096",
        ],
    );
    assert!(
        r0.log_text().contains("closing engine connection"),
        "{}",
        r0.log_text()
    );
}
